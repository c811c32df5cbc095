"""Seeds and RNG state: everything random in training draws from torch's generators, whose
states go into checkpoints, so a resumed run continues the same random stream."""
from __future__ import annotations

import random
import re
from typing import Dict, List

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def parse_seeds(text: str) -> List[int]:
    """'0-9' -> 0..9, '0,3,5' -> [0, 3, 5], '7' -> [7] (non-negative ints)."""
    seeds: List[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise ValueError(f"seeds={text!r} must be like '0-9', '0,3,5' or '7'")
        lo = int(match.group(1))
        seeds.extend(range(lo, int(match.group(2) or lo) + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={text!r} repeats a seed")
    return seeds


def rng_state_tensors() -> Dict[str, torch.Tensor]:
    """The torch generator states of this process as uint8 tensors (safetensors-storable)."""
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state_tensors(state: Dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"].cpu())
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"].cpu())
