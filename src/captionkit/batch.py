"""Caption many image files: batched, one record per image, bad images recorded and skipped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.errors import ImageError
from captionkit.outputs import Record, RecordWriter


@dataclass
class JobSummary:
    images: int = 0
    captioned: int = 0
    errors: int = 0


def caption_files(
    captioner: Captioner,
    paths: Sequence[Path],
    config: DecodingConfig,
    writer: RecordWriter,
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> JobSummary:
    """Caption ``paths`` in batches and write a record per image, in input order."""
    summary = JobSummary()
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        records: list[Record | None] = [None] * len(chunk)
        good, good_index = [], []
        for index, path in enumerate(chunk):
            try:
                good.append(captioner.load_images([path])[0])
                good_index.append(index)
            except ImageError as error:
                records[index] = {"image": str(path), "error": error.reason}
        for index, captions in zip(good_index, captioner.caption_pil(good, config), strict=True):
            record: Record = {
                "image": str(chunk[index]),
                "caption": captions[0].text,
                "score": captions[0].score,
            }
            if len(captions) > 1:
                record["captions"] = [{"caption": c.text, "score": c.score} for c in captions]
            records[index] = record
        done = [record for record in records if record is not None]
        writer.write(done)
        summary.images += len(done)
        summary.errors += sum("error" in record for record in done)
        summary.captioned += sum("error" not in record for record in done)
        if on_progress is not None:
            on_progress(len(chunk))
    return summary
