"""Finding the optional Java tools: pycocoevalcap's jars (the ``captionkit[meteor]`` extra) and ``java``."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from captionkit.errors import CaptionkitError


class MetricUnavailable(CaptionkitError):
    """A metric cannot be computed here (a missing extra, no Java, an offline download); the message says which."""


def pycocoevalcap_dir() -> Path | None:
    """The installed pycocoevalcap package directory, found without importing it (its import pulls in numpy)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def require_java_tool(*parts: str, metric: str) -> Path:
    """The path of a file shipped with pycocoevalcap, checking that it and ``java`` exist."""
    package = pycocoevalcap_dir()
    if package is None:
        raise MetricUnavailable(
            f"{metric} needs pycocoevalcap's jar: install the extra (pip install 'captionkit[meteor]')"
        )
    path = package.joinpath(*parts)
    if not path.is_file():
        raise MetricUnavailable(f"{metric}: {path} is missing from the pycocoevalcap installation")
    if shutil.which("java") is None:
        raise MetricUnavailable(f"{metric} needs Java on PATH (java not found)")
    return path
