"""The parity suite (tests/test_parity.py) with the GPU visible: every backend in the registry,
and `auto`, on CUDA (and on the CPU) against the float64 loop, by the acceptance rule of
tests/parity.py. Extra arguments go to pytest (e.g. `-k cuda`, `-n 4`).

Where pytest is missing, the same cases (parity.cases(): the parity pool and the magnitude
sweep) run through the same runner and rule without it, one line per case.
Exit status 0 only if every case passed. Usage: python scripts/gpu_parity.py [pytest args]
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def without_pytest() -> int:
    import os

    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # as tests/conftest.py does
    sys.path.insert(0, str(TESTS))
    from parity import cases, check_case, input_pool, sweep_inputs

    failures = skipped = passed = 0
    for pool in (input_pool, sweep_inputs):
        for backend, inputs, why in cases(pool):
            if why:
                skipped += 1
                print(f"skip {backend} {inputs.id}: {why}")
                continue
            try:
                check_case(backend, inputs)
                passed += 1
                print(f"ok   {backend} {inputs.id}")
            except Exception:  # report every case, then fail
                failures += 1
                print(f"FAIL {backend} {inputs.id}\n{traceback.format_exc()}")
    print(f"{passed} passed, {failures} failed, {skipped} skipped")
    return 1 if failures else 0


def main(argv) -> int:
    try:
        import pytest
    except ImportError:
        print("pytest is not installed: running the parity cases without it")
        return without_pytest()
    return pytest.main(["-q", "-p", "no:cacheprovider", "-rs",
                        str(TESTS / "test_parity.py"), str(TESTS / "test_parity_registry.py"),
                        *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
