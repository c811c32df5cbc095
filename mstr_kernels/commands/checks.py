"""Checks of command-line values, each failing with a `UsageError` that names the option, the
value and what is allowed (the `mstr` script prints it as one line and exits with code 2)."""
from __future__ import annotations

import os


class UsageError(Exception):
    """A mistake in the command line: `mstr` prints it as one line, exit code 2."""


def check_device(name: str, option: str = "--device"):
    """`auto`, `cpu`, `cuda` or `cuda:N` -> torch.device that exists here."""
    import torch
    allowed = "auto, cpu, cuda, cuda:N"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} {name!r} is not a device: allowed are {allowed}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"{option} {name!r}: allowed are {allowed}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {name!r}: no CUDA GPU is visible to torch "
                             f"(torch.cuda.is_available() is False); allowed here: auto, cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"{option} {name!r}: this machine has {count} GPU(s), allowed are "
                             f"cuda:0..cuda:{count - 1}")
    return device


def check_backend(name: str, device, option: str = "--backend") -> str:
    """A backend name that can run on `device` here (`auto` always can)."""
    from mstr_kernels.ops.backends import BACKEND_NAMES, BACKENDS
    device_type = getattr(device, "type", device)
    if name not in BACKEND_NAMES:
        raise UsageError(f"{option} {name!r} is unknown: allowed are {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        return name
    usable = ["auto"] + [n for n, b in BACKENDS.items()
                         if device_type in b.devices and b.unavailable_reason() is None]
    backend = BACKENDS[name]
    if device_type not in backend.devices:
        raise UsageError(f"{option} {name!r} runs on {'/'.join(backend.devices)} tensors, not "
                         f"{device_type}: allowed on {device_type} here are {', '.join(usable)}")
    why = backend.unavailable_reason()
    if why:
        raise UsageError(f"{option} {name!r} is not available here ({why}): allowed on "
                         f"{device_type} here are {', '.join(usable)}")
    return name


def check_op_params(p: int, levels: int, p_option: str = "--p",
                    levels_option: str = "--levels") -> None:
    """The op's range for p and levels (ops/validation.py), with the options named."""
    from mstr_kernels.ops.validation import check_params
    try:
        check_params(p, levels)
    except ValueError as e:  # "p=... is out of range" or "levels=... is out of range"
        option = levels_option if str(e).startswith("levels") else p_option
        raise UsageError(f"{option}: {e}") from None


def check_file(path: str, option: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"{option} {path!r}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a folder, not a file")
    return path


def check_folder(path: str, option: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"{option} {path!r}: no such folder")
    if not os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a file, not a folder")
    return path


def load_checkpoint_arg(path: str, option: str, *, device="cpu", backend=None,
                        need_extractor: bool = False):
    """(model, meta) of a checkpoint given on the command line, with the option named in every
    error. backend: None keeps the checkpoint's own when it runs on `device` here, else `auto`
    (with a note); a named one must run here."""
    import sys

    from mstr_kernels.training.checkpoint import load_model, read_checkpoint_meta
    check_file(path, option)
    try:
        meta = read_checkpoint_meta(path)
    except ValueError as e:  # "checkpoint 'x' is not ...": the path named once
        raise UsageError(f"{option} {path!r} " + str(e).replace(f"checkpoint {path!r} ", "")
                         .replace(f"checkpoint {path!r}: ", "")) from e
    if need_extractor and not (meta.get("extractor") or {}).get("type") == "hubert":
        raise UsageError(f"{option} {path!r} was trained on dataset {meta.get('dataset')!r}, "
                         f"which has no audio feature extractor (extractor="
                         f"{meta.get('extractor')!r}): give a checkpoint trained on "
                         f"`mstr extract` features")
    if backend is None:
        stored = (meta.get("config") or {}).get("backend", "auto")
        try:
            backend = check_backend(stored, device, option="the checkpoint's backend")
        except UsageError as e:
            print(f"note: {e}; using backend 'auto'", file=sys.stderr)
            backend = "auto"
    else:
        check_backend(backend, device)
    try:
        return load_model(path, map_location=device, backend=backend)
    except (ValueError, KeyError) as e:
        raise UsageError(f"{option} {path!r}: {e}") from e
