"""Builds mstr_kernels._C: the CPU kernels always (with a C++ compiler), the CUDA kernels when
the CUDA toolkit and a CUDA build of torch are present (or MSTR_KERNELS_FORCE_CUDA=1).

Environment:
  MSTR_KERNELS_SKIP_EXT=1    pure Python install (reference and Triton backends only)
  MSTR_KERNELS_SKIP_CUDA=1   build only the CPU part of the extension
  MSTR_KERNELS_FORCE_CUDA=1  build the CUDA part or fail the install
  TORCH_CUDA_ARCH_LIST       default "8.0;9.0+PTX" (sm_80, sm_90 and PTX for newer GPUs)
  MAX_JOBS                   parallel compile jobs (read by torch's ninja build)
  CUDA_HOME / CUDA_PATH      the toolkit; otherwise /usr/local/cuda or the nvcc on PATH
"""
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def find_cuda_home():
    """The toolkit directory that has bin/nvcc (torch guesses /usr/local on some machines)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for c in candidates:
        if c and (Path(c) / "bin" / "nvcc").exists():
            return str(Path(c).resolve())
    return None


def nvcc_version(cuda_home):
    """'13.0' from `nvcc --version`, or None."""
    try:
        text = subprocess.run([str(Path(cuda_home) / "bin" / "nvcc"), "--version"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for token in text.replace(",", " ").split():
        if token[:1].isdigit() and token.count(".") == 1:
            return token
    return None


def nvidia_wheel_includes():
    """Headers of the nvidia-* wheels torch depends on (cusparse.h, cublas_v2.h, ...): a bare
    toolkit lacks them, torch's CUDA headers include them. Passed as -isystem so that the
    toolkit's own headers (-I) come first."""
    dirs = []
    for site in sys.path:
        for pattern in ("nvidia/*/include", "nvidia/include"):
            dirs.extend(sorted(glob.glob(os.path.join(site, pattern))))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def extensions_and_info():
    if env_flag("MSTR_KERNELS_SKIP_EXT"):
        return [], {"skipped": "MSTR_KERNELS_SKIP_EXT=1"}, None
    import torch
    info = {"torch_version": torch.__version__, "torch_cuda_version": torch.version.cuda}
    cuda_home = find_cuda_home()
    force_cuda = env_flag("MSTR_KERNELS_FORCE_CUDA")
    skip_reason = None
    if env_flag("MSTR_KERNELS_SKIP_CUDA"):
        skip_reason = "MSTR_KERNELS_SKIP_CUDA=1"
    elif torch.version.cuda is None:
        skip_reason = f"torch {torch.__version__} is a CPU-only build"
    elif cuda_home is None:
        skip_reason = "no CUDA toolkit found (no bin/nvcc under CUDA_HOME, /usr/local/cuda or PATH)"
    if force_cuda and skip_reason:
        raise RuntimeError(f"MSTR_KERNELS_FORCE_CUDA=1 but the CUDA part cannot be built: {skip_reason}")
    with_cuda = skip_reason is None
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
        info["cuda_home"] = cuda_home
        info["nvcc_version"] = nvcc_version(cuda_home)
        info["cuda_arch_list"] = os.environ["TORCH_CUDA_ARCH_LIST"]
    else:
        info["cuda_skip_reason"] = skip_reason

    import torch.utils.cpp_extension as cpp  # reads CUDA_HOME at import
    if with_cuda:
        cpp.CUDA_HOME = cuda_home
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("**/*.cpp"))
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    include_dirs = [str(ROOT / "csrc")]
    if with_cuda:
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("**/*.cu"))
        system_includes = [flag for d in nvidia_wheel_includes() for flag in ("-isystem", d)]
        ext_cls = cpp.CUDAExtension
        extra = {
            "cxx": cxx_flags + ["-DMSTR_WITH_CUDA"] + system_includes,
            # No --use_fast_math: expf and erff keep their full float32 accuracy (SPEC bounds).
            "nvcc": ["-O3", "-std=c++20", "-lineinfo", "-DMSTR_WITH_CUDA"] + system_includes,
        }
    else:
        ext_cls = cpp.CppExtension
        extra = {"cxx": cxx_flags}
    info["with_cuda"] = with_cuda
    ext = ext_cls("mstr_kernels._C", sources, include_dirs=include_dirs,
                  extra_compile_args=extra, extra_link_args=["-fopenmp"])
    return [ext], info, cpp.BuildExtension


ext_modules, build_info, build_ext = extensions_and_info()
# Recorded next to the library so that a mismatch at import is explained in words
# (mstr_kernels/ops/extension.py reads it).
(ROOT / "mstr_kernels" / "_build_info.json").write_text(json.dumps(build_info, indent=1) + "\n")

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext.with_options(use_ninja=True)} if build_ext else {},
    package_data={"mstr_kernels": ["_build_info.json"]},
)
