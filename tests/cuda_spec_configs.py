"""The configurations with a CUDA forward specialised on (p, levels, D)
(csrc/cuda/fractal_spec_configs.h), and the static report's mirror of the kernel's
compile-time mapping (scripts/gpu_static_report.py: SpecConfig), for the tests."""
import importlib.util
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _static_report():
    spec = importlib.util.spec_from_file_location("gpu_static_report",
                                                  ROOT / "scripts" / "gpu_static_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _listed():
    text = (ROOT / "csrc" / "cuda" / "fractal_spec_configs.h").read_text()
    pl = re.search(r"#define MSTR_SPEC_PL\(X\)(.*?)#endif", text, re.S).group(1)
    ds = re.search(r"#define MSTR_SPEC_D\(X\)(.*?)\n", text).group(1)
    pairs = [(int(a), int(b)) for a, b in re.findall(r"X\((\d+),\s*(\d+)\)", pl)]
    dims = [int(d) for d in re.findall(r"X\((\d+)\)", ds)]
    return [(p, levels, D) for p, levels in pairs for D in dims]


SpecConfig = _static_report().SpecConfig
SPEC_PLD = _listed()
ITEMSIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
# (p, levels, D, dtype) of every specialised forward / backward: those whose shared memory fits
# a block.
SPEC_CASES = [(p, levels, D, dtype) for p, levels, D in SPEC_PLD
              for dtype in (torch.float32, torch.float16, torch.bfloat16)
              if SpecConfig(ITEMSIZE[dtype], p, levels, D).fits]
SPEC_BWD_CASES = [(p, levels, D, dtype) for p, levels, D in SPEC_PLD
                  for dtype in (torch.float32, torch.float16, torch.bfloat16)
                  if SpecConfig(ITEMSIZE[dtype], p, levels, D, "bwd").fits]
