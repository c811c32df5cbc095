"""The `mstr` console script: subcommands exist and `info` explains missing backends."""
import subprocess
import sys

from mstr_kernels.cli import build_parser, main


def test_info_lists_every_backend_with_status(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for name in ("cuda", "triton", "cpu", "reference"):
        assert f"  {name} " in text
    assert "reference  available" in text


def test_demo_compares_backends(capsys):
    assert main(["demo", "--shape", "1,2,20,4", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "reference" in text and "rel err out" in text


def test_console_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "mstr_kernels.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "info" in result.stdout
    assert build_parser().prog == "mstr"
