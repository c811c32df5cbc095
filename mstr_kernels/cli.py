"""The `mstr` console script. Each subcommand lives in its own module, exposing
`register(subparsers)` which adds its parser and sets `func`; modules import their heavy
dependencies inside `func`, so `mstr --help` stays fast.

A mistake the user can make (a bad option value, a missing file, a missing extra) ends in one
line `mstr COMMAND: error: ...` and exit code 2; `--debug` or `MSTR_DEBUG=1` shows the traceback
instead."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from mstr_kernels.commands.checks import UsageError

# subcommand modules, in the order `mstr --help` lists them
COMMAND_MODULES = (
    "mstr_kernels.commands.info",
    "mstr_kernels.commands.demo",
    "mstr_kernels.commands.bench",
    "mstr_kernels.commands.flops",
    "mstr_kernels.commands.train",
    "mstr_kernels.commands.evaluate",
    "mstr_kernels.commands.extract",
    "mstr_kernels.commands.predict",
)

# Optional dependencies: import name -> (pip name, the extra of pyproject.toml that has it).
# tests/test_packaging.py checks this table against pyproject.toml.
EXTRA_OF_MODULE = {
    "sklearn": ("scikit-learn", "train"),
    "tqdm": ("tqdm", "train"),
    "safetensors": ("safetensors", "train"),
    "transformers": ("transformers", "audio"),
    "soundfile": ("soundfile", "audio"),
    "soxr": ("soxr", "audio"),
    "av": ("av", "audio"),
    "matplotlib": ("matplotlib", "plots"),
}
# Exceptions that the library raises for bad values or paths, with a message naming them.
USER_ERRORS = (UsageError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)
DEBUG_HINT = " (--debug or MSTR_DEBUG=1 shows the traceback)"


class _DropNotice(logging.Filter):
    """torch.utils.cpp_extension warns 'No CUDA runtime is found, using CUDA_HOME=...' whenever
    inductor compiles for the CPU on a machine with a toolkit but no GPU: nothing to act on."""

    def filter(self, record):
        return not record.getMessage().startswith("No CUDA runtime is found")


_DROP_NOTICE = _DropNotice()


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (no usage block), exit code 2 as usual."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mstr", description="mstr-kernels: fused multi-scale "
                           "fractal attention, the MSTR model and its training")
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show the full traceback of an error (also MSTR_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for subparser in sub.choices.values():  # `mstr train ... --debug` works too
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the full traceback of an error (also MSTR_DEBUG=1)")
    return parser


def missing_extra_message(error: ModuleNotFoundError):
    """'needs scikit-learn ([train] extra) ...' for a missing optional dependency, else None."""
    top = (error.name or "").split(".")[0]
    if top not in EXTRA_OF_MODULE:
        return None
    package, extra = EXTRA_OF_MODULE[top]
    everything = " ".join(pip for pip, e in EXTRA_OF_MODULE.values() if e == extra)
    return (f"needs {package} (`import {top}` failed), part of the [{extra}] extra: "
            f"pip install {everything} (or pip install --no-build-isolation -e '.[{extra}]' "
            f"in the mstr-kernels checkout)")


def user_error_message(error: BaseException):
    """The one-line message for an error the user caused, None for anything else."""
    if isinstance(error, ModuleNotFoundError):
        return missing_extra_message(error)
    if isinstance(error, SystemExit) and isinstance(error.code, str):
        return error.code
    if isinstance(error, USER_ERRORS):
        text = str(error) if not isinstance(error, OSError) or not error.filename else \
            f"{error.filename!r}: {error.strerror}"
        text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
        return text if isinstance(error, UsageError) else text + DEBUG_HINT
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("MSTR_DEBUG", "0").lower() in ("1", "true", "yes", "on")
    logging.getLogger("torch.utils.cpp_extension").addFilter(_DROP_NOTICE)
    try:
        return int(args.func(args) or 0)
    except (Exception, SystemExit) as e:
        message = None if debug else user_error_message(e)
        if message is None:
            raise
        print(f"mstr {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
