"""The `mstr` console script. Each subcommand lives in its own module, exposing
`register(subparsers)` which adds its parser and sets `func`; modules import their heavy
dependencies inside `func`, so `mstr --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mstr", description="mstr-kernels: fused multi-scale "
                                     "fractal attention, the MSTR model and its training")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
