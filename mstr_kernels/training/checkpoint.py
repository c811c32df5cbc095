"""Checkpoints: one safetensors file holding the model weights, the optimizer state tensors and
the RNG states, with everything else (model config, class names, feature extractor, optimizer
hyperparameters, data order position, history) as JSON in its metadata header.

Written atomically (temporary file in the same directory, then os.replace): a kill leaves the
previous checkpoint intact. Loading parses JSON and raw tensors only; nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models import MSTRConfig, build_model

FORMAT = "mstr-kernels-checkpoint"
VERSION = 1
_META_KEY = "mstr_kernels"


def save_checkpoint(path: str, model: torch.nn.Module, meta: dict,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    extra_tensors: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """model: the bare module (not DDP/compiled). meta: JSON-serializable; must hold 'model'
    ('mstr'|'vanilla') and 'config' (MSTRConfig.to_dict())."""
    tensors = {f"model.{k}": v.detach() for k, v in model.state_dict().items()}
    meta = dict(meta, format=FORMAT, version=VERSION)
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_state(optimizer)
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_meta
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps(meta)}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is a normal file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, map_location="cpu") -> Tuple[Dict[str, torch.Tensor], dict]:
    """-> (all tensors by name, metadata dict)."""
    device = str(map_location) if map_location is not None else "cpu"
    with _open(path, device) as f:
        meta = _meta(path, f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def read_checkpoint_meta(path: str) -> dict:
    """The metadata dict alone (reads the header, no tensors)."""
    with _open(path, "cpu") as f:
        return _meta(path, f.metadata())


def _open(path, device):
    try:
        return safe_open(path, framework="pt", device=device)
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors reports a foreign or damaged file as SafetensorError
        raise ValueError(f"checkpoint {path!r} is not a safetensors file ({e})") from e


def _meta(path, header) -> dict:
    header = header or {}
    if _META_KEY not in header:
        raise ValueError(f"checkpoint {path!r} has no {_META_KEY!r} metadata: not written by "
                         f"mstr-kernels")
    meta = json.loads(header[_META_KEY])
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"checkpoint {path!r}: format={meta.get('format')!r} "
                         f"version={meta.get('version')!r}, expected {FORMAT!r} {VERSION}")
    return meta


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it
    os.umask(mask)
    return mask


def prefixed(tensors: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_model(path: str, map_location="cpu", backend: Optional[str] = None):
    """-> (model in eval mode, meta). meta has 'model', 'config', 'class_names', 'extractor'
    and the training details. `backend` overrides the op backend stored in the config."""
    tensors, meta = load_checkpoint(path, map_location)
    config = dict(meta["config"])
    if backend is not None:
        config["backend"] = backend
    model = build_model(meta["model"], MSTRConfig.from_dict(config))
    model.load_state_dict(prefixed(tensors, "model."))
    return model.to(map_location).eval(), meta


def _optimizer_state(optimizer) -> Tuple[Dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer, tensors: Dict[str, torch.Tensor], meta: dict) -> None:
    state: Dict[int, dict] = {}
    for name, value in prefixed(tensors, "optimizer.").items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["optimizer"]["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
