"""How ``captionkit compare`` writes its records: JSON lines, a JSON list, or a CSV table with a column per model."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from captionkit.cli._common import fail_writing
from captionkit.files import write_atomic


def write_records(output: Path, records: list[dict[str, Any]], names: list[str]) -> None:
    """The records in ``output``, in the format its suffix names; a failure the up-front check cannot foresee (a full
    disk) is one line."""
    suffix = output.suffix.lower()
    if suffix == ".csv":
        text = csv_text(records, names)
    elif suffix == ".json":
        text = json_text(records, indent=2) + "\n"
    else:
        text = "".join(json_text(record) + "\n" for record in records)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        # A file name that is not UTF-8 is kept as its bytes in CSV, as `caption` writes it (JSON escapes it).
        write_atomic(output, text, errors="surrogateescape")
    except OSError as error:
        fail_writing(output, error, "--output")


def json_text(value: Any, indent: int | None = None) -> str:
    """JSON with non-ASCII text readable, or ASCII-escaped where a file name is not valid UTF-8 (``caf\\udce9``)."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, indent=indent)
    return text


def csv_text(records: list[dict[str, Any]], names: list[str]) -> str:
    """One row per image: its path, each model's caption (and CIDEr-D, with --refs), its error."""
    scored = any("CIDEr" in record for record in records)
    header = ["image", *names, *([f"CIDEr {name}" for name in names] if scored else []), "error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        captions, cider = record.get("captions", {}), record.get("CIDEr", {})
        scores = [cider.get(name, "") for name in names] if scored else []
        writer.writerow(
            [record["image"], *(captions.get(name, "") for name in names), *scores, record.get("error", "")]
        )
    return buffer.getvalue()
