"""What an earlier run left at a job's output: records a run without ``--resume`` must not silently replace, and the
staging files of runs that were killed before they could put their output in place.

A JSON output is written whole at the end through a hidden staging file beside it (``.NAME.PID.tmp``, see
:func:`captionkit.files.atomic_writer`); a run killed outright (SIGKILL, a lost node) leaves that file behind and no
output. It holds no array a later run could resume from, so the next run over the same output removes it and says so.
"""

from __future__ import annotations

import re
from pathlib import Path

from captionkit.errors import InputError
from captionkit.files import another_process_alive, write_target
from captionkit.jobs.outputs import iter_records
from captionkit.jobs.parquet_records import journal_path
from captionkit.wording import plural


def output_exists(target: Path, fmt: str) -> bool:
    """Whether ``target`` is there (for Parquet, the file or the journal of an interrupted run), empty or not."""
    return target.exists() or (fmt == "parquet" and journal_path(target).exists())


def refuse_to_replace(target: Path, fmt: str) -> None:
    """Raise an :class:`InputError` naming ``--output`` when ``target`` holds records (or anything that is not
    results): a run without ``--resume`` would replace them. An absent or empty output, or one without records (a
    JSON ``[]``, a CSV header), is no loss."""
    if not (_nonempty(target) or (fmt == "parquet" and _nonempty(journal_path(target)))):
        return
    try:
        count = sum(1 for _ in iter_records(target, fmt)[0])
    except InputError as error:
        raise InputError("--output", f"{target} exists: {error.reason}; --overwrite replaces it") from None
    if count:
        reason = f"{target} exists ({plural(count, 'record')}): --resume continues it, --overwrite replaces it"
        raise InputError("--output", reason)


def remove_stale_staging(target: Path, fmt: str) -> list[str]:
    """Delete the staging files a killed run left for ``target`` (``.NAME.PID.tmp`` whose process is gone; for
    Parquet its journal's too) and return a line for each; a live process's (another run writing the same output
    now) is left alone."""
    lines = []
    for written in (target, journal_path(target)) if fmt == "parquet" else (target,):
        for staged in _stale_staging(written):
            staged.unlink(missing_ok=True)
            line = f"{target}: removed {staged.name}, left by a run that was killed while writing {written.name}"
            if fmt == "json":
                line += " (json is written whole at the end: use jsonl or parquet for jobs that may be cut off)"
            lines.append(line)
    return lines


def _stale_staging(written: Path) -> list[Path]:
    path = write_target(written)  # through a link, the staging file is beside the file it leads to
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.tmp")
    try:
        candidates = sorted(path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"))
    except OSError:
        return []
    return [
        staged
        for staged in candidates
        if (found := pattern.fullmatch(staged.name)) and not another_process_alive(int(found[1]))
    ]


def _glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False
