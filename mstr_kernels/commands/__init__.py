"""Subcommands of the `mstr` console script (see mstr_kernels/cli.py)."""
