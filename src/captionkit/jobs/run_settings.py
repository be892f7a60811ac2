"""The settings a caption run writes its output with, kept beside it in a hidden file (``.NAME.settings.json``), so
that ``--resume`` continues an output only with the model and decoding that began it: a resumed run asking for
another style, beam width or model would otherwise mix two kinds of captions in one file without a word (``merge``
compares its parts' settings for the same reason)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from captionkit.decoding import DecodingConfig
from captionkit.errors import InputError, first_line
from captionkit.files import cannot_write, write_atomic
from captionkit.jobs.parquet_records import journal_path

# Resolved into the style and prompt the settings name: token ids say less to a reader than the words asked for.
_TOKEN_FIELDS = ("start_token_id", "prompt_ids")


def settings_path(target: Path) -> Path:
    """Where the settings of the output ``target`` are kept: a hidden file beside it (shell globs of the outputs,
    ``captions.part-*``, and image folders pass it by)."""
    return target.with_name(f".{target.name}.settings.json")


def run_settings(
    model: str, dtype: str, style: str | None, prompt: str | None, config: DecodingConfig
) -> dict[str, Any]:
    """What decides the captions of a run: the model (a local one by its absolute path), the dtype, the style and
    prompt asked for, and every decoding field; as JSON gives them back."""
    local = Path(model)
    decoding = {key: value for key, value in asdict(config).items() if key not in _TOKEN_FIELDS}
    settings = {
        "model": str(local.resolve()) if local.exists() else model,
        "dtype": dtype,
        "style": style or "neutral",
        "prompt": prompt,
        **decoding,
    }
    return json.loads(json.dumps(settings))


def check_resumed(target: Path, fmt: str, settings: dict[str, Any]) -> None:
    """Refuse to resume ``target`` (in format ``fmt``) with other ``settings`` than it was begun with (none kept: an
    output written before captionkit kept them, which resumes unchecked). An output that is gone (deleted, its
    hidden settings left behind) holds no captions to mix with: the run starts afresh, as ``--resume`` does."""
    path = settings_path(target)
    if not path.is_file() or not _has_output(target, fmt):
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = f"unreadable run settings ({first_line(error)}); delete it to resume unchecked"
        raise InputError(path, reason) from None
    if not isinstance(saved, dict):
        raise InputError(path, "unreadable run settings (not a JSON object); delete it to resume unchecked")
    differ = differing(saved, settings)
    if differ:
        raise InputError(
            "--resume",
            f"{target} was begun with {shown(saved, differ)}; this run asks for {shown(settings, differ)}: resume "
            "with the same settings, or caption into a new --output",
        )


def kept_settings(target: Path) -> dict[str, Any] | None:
    """The settings kept beside the output ``target``; None when there are none, or none that can be read."""
    try:
        saved = json.loads(settings_path(target).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def differing(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The settings two runs gave different values. One that a side lacks is not compared: one added to captionkit
    since an output began (its default then applied), or one since dropped."""
    return [key for key in second if key in first and first[key] != second[key]]


def write_settings(target: Path, settings: dict[str, Any]) -> None:
    """Keep ``settings`` beside the output ``target`` (see :func:`settings_path`), making its directory as the
    output's writer does; a failed write is one line naming the file."""
    path = settings_path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(settings, indent=2) + "\n")
    except OSError as error:
        raise InputError(path, cannot_write(error)) from None


def _has_output(target: Path, fmt: str) -> bool:
    """Whether an earlier run left ``target``, or, for Parquet, the journal an interrupted one writes first."""
    return target.exists() or (fmt == "parquet" and journal_path(target).exists())


def shown(settings: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key} {json.dumps(settings.get(key))}" for key in keys)
