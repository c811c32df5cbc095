"""Checks of the built extension that need no GPU: the library holds sm_90 (and sm_80) code."""
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import mstr_kernels


def _extension_info():
    info_path = Path(mstr_kernels.__file__).parent / "_build_info.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return None, None
    libs = sorted(Path(mstr_kernels.__file__).parent.glob("_C*.so"))
    return info, (libs[0] if libs else None)


def find_cuobjdump(info):
    """cuobjdump on PATH, in the toolkit, or the copy bundled with triton's NVIDIA backend."""
    candidates = [shutil.which("cuobjdump")]
    for home in (info.get("cuda_home"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "cuobjdump"))
    triton = importlib.util.find_spec("triton")
    if triton and triton.origin:
        candidates.append(str(Path(triton.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    return next((c for c in candidates if c and Path(c).is_file()), None)


def test_library_holds_sm90_code():
    info, lib = _extension_info()
    if not info or not info.get("with_cuda") or lib is None:
        pytest.skip("the extension was not built with its CUDA part "
                    f"({(info or {}).get('cuda_skip_reason', 'no build info')})")
    cuobjdump = find_cuobjdump(info)
    if cuobjdump is None:
        pytest.skip("cuobjdump is not installed (neither on PATH, in CUDA_HOME nor in triton)")
    listing = subprocess.run([cuobjdump, "--list-elf", str(lib)], capture_output=True,
                             text=True, check=True).stdout
    assert "sm_90" in listing, listing
    assert "sm_80" in listing or "8.0" not in info.get("cuda_arch_list", ""), listing


@pytest.mark.parametrize("capability,runs", [((8, 0), True), ((8, 6), True), ((9, 0), True),
                                             ((10, 0), True), ((7, 5), False)])
def test_arch_mismatch_is_explained(capability, runs):
    from mstr_kernels.ops.extension import cuda_arch_mismatch
    why = cuda_arch_mismatch({"cuda_arch_list": "8.0;9.0+PTX"}, capability)
    if runs:
        assert why is None
    else:
        assert "sm_75" in why and "TORCH_CUDA_ARCH_LIST" in why


def test_arch_list_without_ptx_refuses_newer_majors():
    from mstr_kernels.ops.extension import cuda_arch_mismatch
    assert "sm_100" in cuda_arch_mismatch({"cuda_arch_list": "8.0;9.0"}, (10, 0))


@pytest.mark.parametrize("arch_list,capability,runs", [
    ("9.0a", (9, 0), True),        # what the H100 machines' environment sets
    ("9.0a", (9, 1), False),       # arch-specific cubins run on that exact GPU only
    ("9.0a", (10, 0), False),
    ("10.0f", (10, 3), True),      # family cubins run on later minors of the family
    ("10.0f", (12, 0), False),
    ("8.0 9.0a+PTX", (12, 0), True),
])
def test_arch_suffixes(arch_list, capability, runs):
    from mstr_kernels.ops.extension import cuda_arch_mismatch
    why = cuda_arch_mismatch({"cuda_arch_list": arch_list}, capability)
    assert (why is None) == runs, why
