"""Small things a new user meets first on the command line: --version, and counts spelled right."""

from __future__ import annotations

import subprocess
import sys

import pytest

from _helpers import run_cli
from captionkit.cli._common import plural
from captionkit.version import __version__


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["--version"], capsys)
    assert (code, out, err) == (0, f"captionkit {__version__}\n", "")


def test_version_flag_as_a_process() -> None:
    done = subprocess.run([sys.executable, "-m", "captionkit.cli", "--version"], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, f"captionkit {__version__}\n")


@pytest.mark.parametrize(("count", "expected"), [(0, "0 images"), (1, "1 image"), (2, "2 images")])
def test_plural(count: int, expected: str) -> None:
    assert plural(count, "image") == expected
