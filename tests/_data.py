"""Where the real test data lives: ``$CAPTIONKIT_DATA``, else ``shared/data`` beside the repository (as in CI)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SHARED_DATA = Path(os.environ.get("CAPTIONKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
COCO_PHOTOS = SHARED_DATA / "coco" / "val2017"


def real_photos(count: int) -> list[Path]:
    """The first ``count`` real COCO photos (sorted by name), checked to be there."""
    photos = sorted(COCO_PHOTOS.glob("*.jpg"))[:count]
    assert len(photos) == count, f"expected {count} real photos in {COCO_PHOTOS}"
    return photos


def copy_coco_photos(root: Path, count: int) -> Path:
    """``root``, a new folder holding the first ``count`` real COCO photos."""
    root.mkdir(parents=True, exist_ok=True)
    for path in real_photos(count):
        shutil.copy(path, root / path.name)
    return root
