"""The reference tools the evaluation tests compare against: pycocoevalcap (the meteor extra, in dev and test) and
Java, which runs its PTB tokenizer and METEOR jar (``make java`` installs it).

pycocoevalcap missing is a broken install and fails. Java missing skips, with the reason in pytest's summary; with
``CAPTIONKIT_REQUIRE_JAVA=1`` (set by CI after ``make java``) it fails too, so the comparisons with the reference
implementation cannot pass by being skipped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from captionkit.evaluation.external import pycocoevalcap_dir


def require_pycocoevalcap() -> Path:
    """pycocoevalcap's package folder; a test fails without it."""
    package = pycocoevalcap_dir()
    if package is None:
        pytest.fail("pycocoevalcap is missing: the meteor extra is in the dev and test installs")
    return package


def require_java() -> None:
    """Java on PATH, else a skip (a failure when ``CAPTIONKIT_REQUIRE_JAVA=1``)."""
    if shutil.which("java") is None:
        reason = "needs Java (apt-get install default-jre-headless; `make java`)"
        if os.environ.get("CAPTIONKIT_REQUIRE_JAVA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
