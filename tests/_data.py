"""Where the real test data lives: ``$CAPTIONKIT_DATA``, else ``shared/data`` beside the repository (as in CI)."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("CAPTIONKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
