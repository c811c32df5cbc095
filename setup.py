"""Builds mstr_kernels._C: the CPU kernels always (with a C++ compiler), the CUDA kernels when
the CUDA toolkit and a CUDA build of torch are present (or MSTR_KERNELS_FORCE_CUDA=1).

Environment:
  MSTR_KERNELS_SKIP_EXT=1    pure Python install (reference and Triton backends only)
  MSTR_KERNELS_SKIP_CUDA=1   build only the CPU part of the extension
  MSTR_KERNELS_FORCE_CUDA=1  build the CUDA part or fail the install
  TORCH_CUDA_ARCH_LIST       default "8.0;9.0+PTX"
  MAX_JOBS                   parallel compile jobs
"""
import glob
import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def find_cuda_home():
    """torch guesses /usr/local on some machines; prefer a directory that has bin/nvcc."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for c in candidates:
        if c and (Path(c) / "bin" / "nvcc").exists():
            return c
    return None


def nvidia_wheel_includes():
    """Headers of the nvidia-* wheels torch depends on (cusparse.h, cublas_v2.h, ...)."""
    dirs = []
    for site in sys.path:
        for pattern in ("nvidia/*/include", "nvidia/include"):
            dirs.extend(sorted(glob.glob(os.path.join(site, pattern))))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def extensions_and_info():
    info = {}
    if env_flag("MSTR_KERNELS_SKIP_EXT"):
        return [], {"skipped": "MSTR_KERNELS_SKIP_EXT=1"}, None
    import torch
    info["torch_version"] = torch.__version__
    info["torch_cuda_version"] = torch.version.cuda
    cuda_home = find_cuda_home()
    force_cuda = env_flag("MSTR_KERNELS_FORCE_CUDA")
    skip_reason = None
    if env_flag("MSTR_KERNELS_SKIP_CUDA"):
        skip_reason = "MSTR_KERNELS_SKIP_CUDA=1"
    elif torch.version.cuda is None:
        skip_reason = "torch is a CPU-only build"
    elif cuda_home is None:
        skip_reason = "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    if force_cuda and skip_reason:
        raise RuntimeError(f"MSTR_KERNELS_FORCE_CUDA=1 but the CUDA part cannot be built: {skip_reason}")
    with_cuda = skip_reason is None
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        info["cuda_home"] = cuda_home
        info["cuda_arch_list"] = os.environ["TORCH_CUDA_ARCH_LIST"]
    else:
        info["cuda_skip_reason"] = skip_reason

    import torch.utils.cpp_extension as cpp  # reads CUDA_HOME at import
    if with_cuda:
        cpp.CUDA_HOME = cuda_home
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("**/*.cpp"))
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    define_macros = []
    include_dirs = [str(ROOT / "csrc")]
    if with_cuda:
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("**/*.cu"))
        define_macros.append(("MSTR_WITH_CUDA", None))
        include_dirs += nvidia_wheel_includes()
        ext_cls = cpp.CUDAExtension
        extra = {"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20", "--use_fast_math",
                                            "-lineinfo", "-DMSTR_WITH_CUDA"]}
    else:
        ext_cls = cpp.CppExtension
        extra = {"cxx": cxx_flags}
    info["with_cuda"] = with_cuda
    ext = ext_cls("mstr_kernels._C", sources, include_dirs=include_dirs,
                  define_macros=define_macros, extra_compile_args=extra,
                  extra_link_args=["-fopenmp"])
    return [ext], info, cpp.BuildExtension


ext_modules, build_info, build_ext = extensions_and_info()
# Recorded next to the library so that a mismatch at import is explained in words.
(ROOT / "mstr_kernels" / "_build_info.json").write_text(json.dumps(build_info, indent=1) + "\n")

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext.with_options(use_ninja=True)} if build_ext else {},
    package_data={"mstr_kernels": ["_build_info.json"]},
)
