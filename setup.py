"""Builds mstr_kernels._C: the CPU kernels always (with a C++ compiler), the CUDA kernels when
the CUDA toolkit and a CUDA build of torch are present (or MSTR_KERNELS_FORCE_CUDA=1).

Environment:
  MSTR_KERNELS_SKIP_EXT=1    pure Python install (reference and Triton backends only)
  MSTR_KERNELS_SKIP_CUDA=1   build only the CPU part of the extension
  MSTR_KERNELS_FORCE_CUDA=1  build the CUDA part or fail the install
  TORCH_CUDA_ARCH_LIST       default "8.0;9.0+PTX" (sm_80, sm_90 and PTX for newer GPUs)
  MAX_JOBS                   parallel compile jobs (read by torch's ninja build)
  CUDA_HOME / CUDA_PATH      the toolkit; otherwise /usr/local/cuda or the nvcc on PATH
  MSTR_KERNELS_ALLOW_TORCH_MISMATCH=1  build even when the torch compiled against is not the
                             one that will import the extension (see check_build_torch)
  MSTR_KERNELS_BUILD_DIR     where objects and metadata are built (default: a folder under the
                             system temp dir, so that the checkout stays clean)

Build the extension against the torch you will run it with: install torch first, then
`pip install --no-build-isolation .` (pip's default build isolation fetches another torch).
"""
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def target_torch():
    """(version, folder) of the torch that the target environment will import, or (None, None):
    asked of this interpreter in a subprocess without the PYTHONPATH that pip's isolated build
    environment sets (pip runs the build with the target's interpreter)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    code = ("import importlib.util as u; s = u.find_spec('torch'); "
            "print(s.submodule_search_locations[0] if s else '')")
    try:
        folder = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                text=True, timeout=120, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    if not folder:
        return None, None
    return torch_version_in(folder), folder


def torch_version_in(folder):
    """torch.__version__ read from torch/version.py without importing it."""
    try:
        text = (Path(folder) / "version.py").read_text()
    except OSError:
        return None
    match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
    return match.group(1) if match else None


def check_build_torch(build_version, build_folder, target_version, target_folder,
                      root=ROOT, python=sys.executable):
    """(fatal, message) when the torch the extension is compiled against (build_*) is not the one
    that will import it (target_*), else (False, None). A different version cannot load
    (mstr_kernels._C would be refused at import and every op would run on `reference`): fatal.
    No torch in the target yet: pip will install one, possibly another build: a warning."""
    if target_folder and os.path.realpath(target_folder) == os.path.realpath(build_folder):
        return False, None
    command = (f"{python} -m pip install --no-build-isolation '{root}' (add -e for an editable "
               f"install, [extras] as needed)")
    if target_version is None:
        return False, (f"mstr-kernels compiles its extension against torch {build_version} of an "
                       f"isolated build environment ({build_folder}), and the target environment "
                       f"has no torch yet: if pip installs another torch build, mstr_kernels._C "
                       f"will not load. Safer: install torch first, then run: {command}")
    if target_version == build_version:
        return False, None
    return True, (f"mstr-kernels would compile its extension against torch {build_version} "
                  f"(from {build_folder}, pip's isolated build environment), but the torch "
                  f"installed here is {target_version} ({target_folder}): the extension would "
                  f"not load with it. Run instead: {command}; or set "
                  f"MSTR_KERNELS_ALLOW_TORCH_MISMATCH=1 to build anyway")


def in_isolated_build_env(folder) -> bool:
    """Whether `folder` lies in a build frontend's throw-away environment (pip's
    pip-build-env-*, pypa/build's build-env-*, uv's builds-v0/). A plain venv under the temp
    directory (a CI checkout) is not one."""
    real = os.path.realpath(folder)
    return any(marker in real for marker in ("pip-build-env-", f"{os.sep}build-env-", "builds-v0"))


def refuse_or_warn_torch_mismatch(torch):
    build_folder = os.path.dirname(torch.__file__)
    if not in_isolated_build_env(build_folder):  # the torch of this environment (or PYTHONPATH)
        return
    fatal, message = check_build_torch(torch.__version__, build_folder, *target_torch())
    if message is None:
        return
    fatal = fatal and not env_flag("MSTR_KERNELS_ALLOW_TORCH_MISMATCH")
    bar = "*" * 78
    print(f"\n{bar}\n{'ERROR' if fatal else 'WARNING'}: {message}\n{bar}\n", file=sys.stderr,
          flush=True)
    if fatal:
        raise SystemExit(1)


def extensions_and_info():
    if env_flag("MSTR_KERNELS_SKIP_EXT"):
        return [], {"skipped": "MSTR_KERNELS_SKIP_EXT=1"}, None
    import torch
    refuse_or_warn_torch_mismatch(torch)
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


def build_ext_recording(base, build_info):
    """build_ext that writes `_build_info.json` next to the built library (and next to the
    in-place copy), so that a mismatch at import is explained in words
    (mstr_kernels/ops/extension.py reads it)."""
    class BuildExt(base):
        def run(self):
            super().run()
            text = json.dumps(build_info, indent=1) + "\n"
            built = Path(self.get_ext_fullpath("mstr_kernels._C")).parent
            targets = {built}
            if self.inplace or getattr(self, "editable_mode", False):
                targets.add(ROOT / "mstr_kernels")
            for folder in targets:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "_build_info.json").write_text(text)
    return BuildExt


def build_dir(build_info):
    """Out of the checkout, one per checkout and torch build (ninja rebuilds incrementally)."""
    if os.environ.get("MSTR_KERNELS_BUILD_DIR"):
        return os.environ["MSTR_KERNELS_BUILD_DIR"]
    key = hashlib.sha1(f"{ROOT}|{build_info.get('torch_version')}".encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"mstr-kernels-build-{key}")


if __name__ == "__main__":  # as pip's build backend runs it; tests import the helpers above
    ext_modules, build_info, build_ext = extensions_and_info()
    out = build_dir(build_info)
    os.makedirs(out, exist_ok=True)
    setup(
        ext_modules=ext_modules,
        cmdclass={"build_ext": build_ext_recording(build_ext.with_options(use_ninja=True),
                                                   build_info)} if build_ext else {},
        options={"build": {"build_base": out}, "egg_info": {"egg_base": out}},
    )
