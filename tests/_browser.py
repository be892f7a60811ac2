"""Headless Chromium for the page tests: Playwright drives Debian's chromium (``make browser`` installs it).

Skips, with the reason shown in pytest's summary, when chromium or playwright is absent; with
``CAPTIONKIT_REQUIRE_BROWSER=1`` (set by CI after ``make browser``) their absence fails instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
MISSING = [
    what
    for what, present in (
        ("chromium (apt-get install chromium; `make browser`)", CHROMIUM is not None),
        ("playwright (pip install 'captionkit[browser]')", importlib.util.find_spec("playwright") is not None),
    )
    if not present
]


def chromium_browser() -> Iterator[Any]:
    """A launched headless browser for a fixture to yield; skips (or fails when required) without one."""
    if MISSING:
        reason = "browser test needs " + " and ".join(MISSING)
        if os.environ.get("CAPTIONKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI and the dev machines run as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()
