"""How ``captionkit compare`` writes its records: JSON lines, a JSON list, or a CSV table with a column per model."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from captionkit.cli._common import fail_writing
from captionkit.files import write_atomic


def write_records(output: Path, records: list[dict[str, Any]], names: list[str]) -> None:
    """The records in ``output``, in the format its suffix names; a failure the up-front check cannot foresee (a full
    disk) is one line."""
    from captionkit.jobs.outputs import to_json

    suffix = output.suffix.lower()
    if suffix == ".csv":
        text = csv_text(records, names)
    elif suffix == ".json":
        text = to_json(records, indent=2) + "\n"
    else:
        text = "".join(to_json(record) + "\n" for record in records)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        # A file name that is not UTF-8 is kept as its bytes in CSV, as `caption` writes it (JSON escapes it).
        write_atomic(output, text, errors="surrogateescape")
    except OSError as error:
        fail_writing(output, error, "--output")


def csv_header(names: list[str], scored: bool) -> list[str]:
    """The CSV table's columns: the image, each model's caption (and CIDEr-D when ``scored``), the error."""
    return ["image", *names, *([f"CIDEr {name}" for name in names] if scored else []), "error"]


def check_csv_names(names: list[str], scored: bool) -> None:
    """Refuse a model name that is also another column of the CSV table (``image``, ``error``, ``CIDEr NAME``): two
    columns of one name cannot be told apart by whoever reads the table."""
    from captionkit.errors import InputError

    header = csv_header(names, scored)
    for name in names:
        if header.count(name) > 1:
            reason = f"the model name {name!r} is also a column of the CSV table ({', '.join(header)})"
            raise InputError("--model", f"{reason}; name the model otherwise with NAME=MODEL")


def csv_text(records: list[dict[str, Any]], names: list[str]) -> str:
    """One row per image: its path, each model's caption (and CIDEr-D, with --refs), its error."""
    scored = any("CIDEr" in record for record in records)
    header = csv_header(names, scored)
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
