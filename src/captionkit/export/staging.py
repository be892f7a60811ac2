"""Writing an export (or a checkpoint, by ``Captioner.save_pretrained``) so that a failure or Ctrl-C on the way
leaves no half-written directory behind.

An int8 export is written as a plain fp32 checkpoint first and quantized after: stopped in between, its directory
loaded as the fp32 model, silently, and the CLI refused to export into it again (not empty). The files are written
into a staging directory instead, and put in place once complete, the marker file (which makes the directory load
as an export; a checkpoint's ``config.json``) last.

An export killed outright (SIGKILL, SIGTERM, a lost node) runs no cleanup and leaves its staging directory behind:
inside ``output`` when that existed (an empty directory the user made), which then read as "not empty", or beside it.
Its name holds the writing process's number (``.export-partial-PID-HEX``, ``.NAME.export-partial-PID-HEX``), so the
next export of the same ``output`` removes those of processes that are gone, and says so; a live process's (another
export writing there now) is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from captionkit.files import another_process_alive
from captionkit.trained_on import TRAIN_CONFIG

# transformers' generation settings: written by the families that are transformers models, and by no other.
GENERATION_CONFIG = "generation_config.json"
# Files an earlier export of the same kind may hold that a new one need not write: removed when it is written
# again, so that none of them outlives the export it came from (another model's training settings, fp32 weights
# beside int8 ones).
EXPORT_FILES = (
    TRAIN_CONFIG,
    "model.safetensors",
    "model.int8.safetensors",
    GENERATION_CONFIG,
    "encoder.onnx",
    "cross.onnx",
    "decoder.onnx",
)
STAGING_PREFIX = ".export-partial-"
# A staging directory's name after its prefix: the number of the process writing it, and a random part.
_STAGING_SUFFIX = r"(?P<pid>\d+)-[0-9a-f]+"


@contextmanager
def staged_export(
    output: Path, marker: str, replaced: Collection[str] = EXPORT_FILES, writer: str = "an export"
) -> Iterator[Path]:
    """A directory to write an export into; on success its files move to ``output``, ``marker`` last. On any
    failure (Ctrl-C included) it is removed and ``output`` is as it was. Over an ``output`` of the same kind (its
    ``marker`` there), the files of ``replaced`` that this write leaves out are removed; ``writer`` names what
    writes ``output``, for the line about a killed one's leftovers."""
    target = Path(os.path.realpath(output))
    removed = remove_stale_staging(output, writer)
    if removed:
        print(removed, file=sys.stderr)
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if target.is_dir():
        staging = target / f"{STAGING_PREFIX}{suffix}"  # inside: the parent may not be writable
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}{STAGING_PREFIX}{suffix}"
    staging.mkdir()
    try:
        yield staging
        _publish(staging, target, marker, replaced)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_stale_staging(path: Path) -> bool:
    """Whether ``path``, an entry of an export's output directory, is a staging directory an export left there when
    it was killed (its process is gone): no file of the user's, and no reason to call the directory "not empty"."""
    found = re.fullmatch(re.escape(STAGING_PREFIX) + _STAGING_SUFFIX, path.name)
    return found is not None and _is_stale(path, int(found["pid"]))


def remove_stale_staging(output: Path, writer: str = "an export") -> str | None:
    """Delete the staging directories that killed exports left for ``output`` (inside it, or beside it when it did
    not exist yet), and return one line naming them (left by ``writer``); None when there were none. A live
    process's is left alone."""
    target = Path(os.path.realpath(output))
    beside = re.compile(re.escape(f".{target.name}{STAGING_PREFIX}") + _STAGING_SUFFIX)
    stale = [path for path in _entries(target) if is_stale_staging(path)]
    stale += [
        path
        for path in _entries(target.parent)
        if (found := beside.fullmatch(path.name)) and _is_stale(path, int(found["pid"]))
    ]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    removed = [path.name for path in stale if not os.path.lexists(path)]
    if not removed:
        return None
    return f"{output}: removed {', '.join(removed)}, left by {writer} that was killed while writing it"


def _is_stale(path: Path, pid: int) -> bool:
    return path.is_dir() and not path.is_symlink() and not another_process_alive(pid)


def _entries(directory: Path) -> list[Path]:
    """What ``directory`` holds, sorted; nothing when it is no directory or cannot be read."""
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def is_export_file(path: str | os.PathLike[str], output: Path) -> bool:
    """Whether ``path`` (a file an error names) is one the export of ``output`` was writing: in ``output`` or in its
    staging directory, whose name means nothing to the user."""
    found = Path(os.path.realpath(path))
    target = Path(os.path.realpath(output))
    return found == target or target in found.parents or any(STAGING_PREFIX in part for part in found.parts)


def _publish(staging: Path, target: Path, marker: str, replaced: Collection[str]) -> None:
    if not target.exists():
        staging.rename(target)
        return
    written = {path.name for path in staging.iterdir()}
    if (target / marker).is_file():  # an export of this kind written again
        # Its marker goes first: stopped midway, the directory is no export rather than a mixed one.
        (target / marker).unlink()
        for name in set(replaced) - written:
            (target / name).unlink(missing_ok=True)
    for name in sorted(written - {marker}):
        os.replace(staging / name, target / name)
    os.replace(staging / marker, target / marker)
