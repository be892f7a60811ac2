"""Writing an export so that a failure or Ctrl-C on the way leaves no half-written directory behind.

An int8 export is written as a plain fp32 checkpoint first and quantized after: stopped in between, its directory
loaded as the fp32 model, silently, and the CLI refused to export into it again (not empty). The files are written
into a staging directory instead, and put in place once complete, the marker file (which makes the directory load
as an export) last.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from captionkit.trained_on import TRAIN_CONFIG

# Files an earlier export of the same kind may hold that a new one need not write: removed when it is written
# again, so that none of them outlives the export it came from (another model's training settings, fp32 weights
# beside int8 ones).
EXPORT_FILES = (
    TRAIN_CONFIG,
    "model.safetensors",
    "model.int8.safetensors",
    "generation_config.json",
    "encoder.onnx",
    "cross.onnx",
    "decoder.onnx",
)
STAGING_PREFIX = ".export-partial-"


@contextmanager
def staged_export(output: Path, marker: str) -> Iterator[Path]:
    """A directory to write an export into; on success its files move to ``output``, ``marker`` last. On any
    failure (Ctrl-C included) it is removed and ``output`` is as it was."""
    target = Path(os.path.realpath(output))
    if target.is_dir():
        staging = target / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"  # inside: the parent may not be writable
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        _publish(staging, target, marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_export_file(path: str | os.PathLike[str], output: Path) -> bool:
    """Whether ``path`` (a file an error names) is one the export of ``output`` was writing: in ``output`` or in its
    staging directory, whose name means nothing to the user."""
    found = Path(os.path.realpath(path))
    target = Path(os.path.realpath(output))
    return found == target or target in found.parents or any(STAGING_PREFIX in part for part in found.parts)


def _publish(staging: Path, target: Path, marker: str) -> None:
    if not target.exists():
        staging.rename(target)
        return
    written = {path.name for path in staging.iterdir()}
    if (target / marker).is_file():  # an export of this kind written again
        # Its marker goes first: stopped midway, the directory is no export rather than a mixed one.
        (target / marker).unlink()
        for name in set(EXPORT_FILES) - written:
            (target / name).unlink(missing_ok=True)
    for name in sorted(written - {marker}):
        os.replace(staging / name, target / name)
    os.replace(staging / marker, target / marker)
