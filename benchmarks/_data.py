"""Where the benchmarks find the real data: ``$CAPTIONKIT_DATA`` (as the tests do), else ``../shared/data`` beside
the checkout."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("CAPTIONKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
