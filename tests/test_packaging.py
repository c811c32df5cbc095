"""The install: a lean core (torch + numpy) with extras, the build's torch-mismatch refusal,
the dataset registry's one-way imports, and file modes of checkpoints."""
import ast
import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = ("sklearn", "tqdm", "safetensors", "transformers", "soundfile", "soxr", "av",
            "matplotlib")


def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement):
    for sep in "[<>=!; ":
        requirement = requirement.split(sep)[0]
    return requirement


def test_core_dependencies_are_torch_and_numpy_and_extras_match_the_cli_table():
    from mstr_kernels.cli import EXTRA_OF_MODULE
    project = _pyproject()
    assert sorted(_name(r) for r in project["dependencies"]) == ["numpy", "torch"]
    extras = project["optional-dependencies"]
    for extra in ("train", "audio", "plots"):
        listed = sorted(_name(r) for r in extras[extra])
        assert listed == sorted(pip for pip, e in EXTRA_OF_MODULE.values() if e == extra), extra
    assert extras["all"] == ["mstr-kernels[train,audio,plots]"]
    assert "mstr-kernels[all]" in extras["dev"] and "pytest" in [_name(r) for r in extras["dev"]]
    makefile = (ROOT / "Makefile").read_text()
    assert "'.[dev]'" in makefile  # make test installs everything


def test_op_module_and_models_import_without_any_extra():
    code = ("import sys\n"
            f"for m in {OPTIONAL!r}: sys.modules[m] = None  # import m raises ImportError\n"
            "import torch, mstr_kernels, mstr_kernels.nn, mstr_kernels.models, mstr_kernels.data\n"
            "from mstr_kernels import MultiScaleAttention, fractal_attention\n"
            "from mstr_kernels.models import MSTR, MSTRConfig\n"
            "model = MSTR(MSTRConfig(feature_dim=8, num_classes=2, num_layers=1, num_heads=2,"
            " backend='reference'))\n"
            "print(tuple(model(torch.randn(1, 10, 8)).shape))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 2)"


def test_dataset_registry_imports_no_dataset():
    """The datasets import the registry, never the reverse (no circular import)."""
    data = ROOT / "mstr_kernels" / "data"
    for module in ("registry.py", "base.py"):
        tree = ast.parse((data / module).read_text())
        imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for a in node.names}
        assert not any(name.split(".")[-1] in ("corpora", "synthetic", "iemocap", "meld",
                                                "cremad", "folder") for name in imported), module
    from mstr_kernels.data import DATASET_BUILDERS
    from mstr_kernels.data.registry import DATASET_BUILDERS as same
    assert DATASET_BUILDERS is same
    assert {"synthetic", "iemocap", "meld", "cremad", "folder"} <= set(DATASET_BUILDERS)


def test_registering_a_dataset_name_twice_is_refused():
    from mstr_kernels.data.registry import register_dataset
    with pytest.raises(ValueError, match="'synthetic' is already registered"):
        register_dataset("synthetic")(lambda features_dir: None)


# ---- setup.py: the torch the extension is compiled against -----------------------------------

def _setup_module():
    spec = importlib.util.spec_from_file_location("mstr_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # __name__ is not "__main__": setup() is not called
    return module


def test_build_refuses_another_torch_than_the_installed_one(tmp_path):
    setup = _setup_module()
    isolated = "/tmp/pip-build-env-x/overlay/lib/python3.11/site-packages/torch"
    fatal, message = setup.check_build_torch("2.14.1+cu130", isolated, "2.13.0+cpu",
                                             "/venv/lib/python3.11/site-packages/torch",
                                             root="/src/mstr-kernels", python="/venv/bin/python")
    assert fatal
    assert "2.14.1+cu130" in message and "2.13.0+cpu" in message
    assert "/venv/bin/python -m pip install --no-build-isolation '/src/mstr-kernels'" in message
    # the same torch (no isolation), or the same version fetched: nothing to say
    assert setup.check_build_torch("2.14.1", isolated, "2.14.1", isolated) == (False, None)
    assert setup.check_build_torch("2.14.1", isolated, "2.14.1", "/venv/torch") == (False, None)
    # no torch in the target yet: a warning with the command, not a refusal
    fatal, message = setup.check_build_torch("2.14.1", isolated, None, None)
    assert not fatal and "--no-build-isolation" in message and "no torch yet" in message


def test_setup_py_refuses_before_compiling(tmp_path):
    """setup.py run as pip's isolated build runs it: a torch 0.0.1 first on PYTHONPATH, in a
    pip-build-env-* folder, while this environment has the real torch."""
    fake = tmp_path / "pip-build-env-test" / "overlay" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '0.0.1+isolated'\n")
    env = dict(os.environ, PYTHONPATH=str(fake.parent), PYTHONNOUSERSITE="1")
    env.pop("MSTR_KERNELS_SKIP_EXT", None)
    env.pop("MSTR_KERNELS_ALLOW_TORCH_MISMATCH", None)
    result = subprocess.run([sys.executable, str(ROOT / "setup.py"), "--name"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    import torch
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ERROR: mstr-kernels would compile its extension against torch 0.0.1+isolated" \
        in result.stderr
    assert f"the torch installed here is {torch.__version__}" in result.stderr
    assert "-m pip install --no-build-isolation" in result.stderr


def test_build_checks_only_torch_from_an_isolated_build_environment(tmp_path):
    import tempfile
    setup = _setup_module()
    for folder in ("/tmp/pip-build-env-abc/overlay/lib/python3.11/site-packages/torch",
                   "/home/u/.cache/uv/builds-v0/.tmpX/lib/python3.11/site-packages/torch",
                   os.path.join(tempfile.gettempdir(), "build-env-x", "torch")):
        assert setup.in_isolated_build_env(folder), folder
    import torch
    assert not setup.in_isolated_build_env(os.path.dirname(torch.__file__))
    assert not setup.in_isolated_build_env("/opt/venv/lib/python3.11/site-packages/torch")
    # a checkout cloned under the temp directory (as CI clones) keeps its own venv's torch
    assert not setup.in_isolated_build_env(
        os.path.join(tempfile.gettempdir(), "clone", ".venv", "lib", "site-packages", "torch"))


def test_build_reads_the_target_torch_version_without_importing_it(tmp_path):
    setup = _setup_module()
    (tmp_path / "version.py").write_text("__version__ = '2.13.0+cpu'\ncuda = None\n")
    assert setup.torch_version_in(tmp_path) == "2.13.0+cpu"
    assert setup.torch_version_in(tmp_path / "missing") is None
    import torch
    version, folder = setup.target_torch()  # this interpreter, as pip's build would ask it
    assert version == torch.__version__ and os.path.samefile(folder, os.path.dirname(torch.__file__))


# ---- files ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_honour_the_umask(tmp_path, umask, mode):
    import torch
    pytest.importorskip("safetensors")
    from mstr_kernels.training.checkpoint import save_checkpoint
    old = os.umask(umask)
    try:
        path = tmp_path / "best.safetensors"
        save_checkpoint(str(path), torch.nn.Linear(2, 2), {"model": "x", "config": {}})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]  # no temporary left
