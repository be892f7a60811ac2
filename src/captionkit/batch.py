"""Caption many image files: batched, one record per image, bad images recorded and skipped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from captionkit.api import Caption, Captioner
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
        opened: dict[int, Image.Image] = {}
        for index, path in enumerate(chunk):
            try:
                opened[index] = captioner.load_images([path])[0]
            except ImageError as error:
                records[index] = {"image": str(path), "error": error.reason}
        # Caption each run of consecutive good images with its position in the whole input, so that seeded
        # sampling gives an image the same captions whatever the batch size and the bad files around it.
        for run in _runs(sorted(opened)):
            captions = captioner.caption_pil([opened[i] for i in run], config, image_offset=start + run[0])
            for index, found in zip(run, captions, strict=True):
                records[index] = _record(chunk[index], found)
        done = [record for record in records if record is not None]
        writer.write(done)
        summary.images += len(done)
        summary.errors += sum("error" in record for record in done)
        summary.captioned += sum("error" not in record for record in done)
        if on_progress is not None:
            on_progress(len(chunk))
    return summary


def _runs(indices: Sequence[int]) -> list[list[int]]:
    """Split sorted ``indices`` into runs of consecutive numbers: [0, 1, 3] -> [[0, 1], [3]]."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def _record(path: Path, captions: Sequence[Caption]) -> Record:
    record: Record = {"image": str(path), "caption": captions[0].text, "score": captions[0].score}
    if len(captions) > 1:
        record["captions"] = [{"caption": c.text, "score": c.score} for c in captions]
    return record
