# Set-up and checks from a fresh clone: `make test`, `make demo`. Both are idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
# Rebuild the install when the build inputs change.
BUILD_INPUTS := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: test demo bench install clean

install: $(VENV)/.installed

$(VENV)/.installed: $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" setuptools wheel ninja pybind11
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e '.[dev]'
	$(PY) -m mstr_kernels.cli info
	touch $@

# Without a GPU, tests/conftest.py runs the Triton kernels under TRITON_INTERPRET=1.
test: install
	$(PY) -m pytest tests -q -p no:cacheprovider

# The op on every available backend, the quick benchmark sweep (table, JSON, plots under
# runs/demo/), and a short synthetic training run of MSTR.
demo: install
	$(PY) -m mstr_kernels.cli info
	$(PY) -m mstr_kernels.cli demo
	$(PY) -m mstr_kernels.cli bench --quick --json runs/demo/bench.json --plots runs/demo/plots
	$(PY) -m mstr_kernels.cli train --dataset synthetic --quick --out runs/demo/synthetic

bench: install
	$(PY) -m mstr_kernels.cli bench --json runs/bench/latest.json --plots runs/bench/latest

clean:
	rm -rf build $(VENV) *.egg-info mstr_kernels/_C*.so mstr_kernels/_build_info.json
