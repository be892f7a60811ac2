"""Caption many image files: batched, one record per image, bad images recorded and skipped."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from captionkit.api import Captioner
from captionkit.decoding import Caption, DecodingConfig, generate, to_captions
from captionkit.jobs.outputs import Record, RecordWriter
from captionkit.jobs.pipeline import load_items, normalise_on_device

# on_captions(paths, pixels, captions): each batch's good images, e.g. to draw their attention maps.
OnCaptions = Callable[[list[Path], torch.Tensor, list[list[Caption]]], None]


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
    *,
    positions: Sequence[int] | None = None,
    workers: int = 0,
    prefetch: int = 2,
    on_captions: OnCaptions | None = None,
) -> JobSummary:
    """Caption ``paths`` at ``positions`` (default 0, 1, ...): :func:`caption_items` of the pairs."""
    positions = range(len(paths)) if positions is None else positions
    if len(positions) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(positions)} positions")
    items = zip(positions, paths, strict=True)
    return caption_items(
        captioner,
        items,
        config,
        writer,
        batch_size,
        on_progress,
        workers=workers,
        prefetch=prefetch,
        on_captions=on_captions,
    )


def caption_items(
    captioner: Captioner,
    items: Iterable[tuple[int, Path]],
    config: DecodingConfig,
    writer: RecordWriter,
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
    *,
    workers: int = 0,
    prefetch: int = 2,
    on_captions: OnCaptions | None = None,
) -> JobSummary:
    """Caption ``items`` (position, path) in batches and write one record per image, in input order.

    ``items`` is read lazily, a batch at a time as the loader sends batches out, so a stream of any length costs the
    same memory. A position is the image's place in the whole job: seeded sampling gives an image the captions of its
    position, so a shard or a resumed run samples what one uninterrupted run would.
    Images are decoded in ``workers`` DataLoader processes (0: in this one), ``prefetch`` batches ahead each.
    ``on_captions(paths, pixels, captions)`` sees each batch's good images, e.g. to draw attention maps.
    On a GPU, batches come pinned and as uint8, copied without blocking and normalised on the device.
    """
    gpu = captioner.device.type == "cuda"
    preprocessing = captioner.preprocessing
    batches = load_items(
        items, preprocessing, captioner.limits, batch_size, workers, prefetch, pin_memory=gpu, uint8=gpu
    )
    summary = JobSummary()
    for batch in batches:
        pixels = batch.pixels.to(captioner.device, non_blocking=gpu)
        if pixels.dtype == torch.uint8:  # not for a batch without good images
            pixels = normalise_on_device(preprocessing, pixels)
        captions = caption_pixels(captioner, pixels, batch.good, config)
        paths = dict(zip(batch.positions, batch.paths, strict=True))
        if on_captions is not None:
            on_captions([Path(paths[i]) for i in batch.good], pixels, captions)
        found = dict(zip(batch.good, captions, strict=True))
        records = [
            caption_record(Path(paths[i]), found[i]) if i in found else {"image": paths[i], "error": batch.errors[i]}
            for i in batch.positions
        ]
        writer.write(records)
        summary.images += len(records)
        summary.errors += len(batch.errors)
        summary.captioned += len(found)
        if on_progress is not None:
            on_progress(len(records))
    return summary


def caption_pixels(
    captioner: Captioner, pixels: torch.Tensor, positions: Sequence[int], config: DecodingConfig
) -> list[list[Caption]]:
    """n-best captions of preprocessed ``pixels`` (B, 3, H, W) whose images sit at ``positions`` in the job.

    Seeded sampling draws image j's tokens from ``seed + j``, which the decoder supports for consecutive
    positions, so such batches are split into runs of consecutive positions; other decoding takes one call.
    """
    if not positions:
        return []
    seeded = config.do_sample and config.seed is not None
    runs = _runs(positions) if seeded else [(0, len(positions))]
    captions: list[list[Caption]] = []
    for start, end in runs:
        hypotheses = generate(captioner.model, pixels[start:end], config=config, image_offset=positions[start])
        captions.extend(to_captions(hypotheses, captioner.tokenizer))
    return captions


def _runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` slices of ``positions`` that count up by one: [4, 5, 9] -> [(0, 2), (2, 3)]."""
    runs: list[tuple[int, int]] = []
    start = 0
    for index in range(1, len(positions) + 1):
        if index == len(positions) or positions[index] != positions[index - 1] + 1:
            runs.append((start, index))
            start = index
    return runs


def caption_record(path: Path, captions: Sequence[Caption]) -> Record:
    """The result record of one image: its best caption and score, and the n-best list when there are several."""
    record: Record = {"image": str(path), "caption": captions[0].caption, "score": captions[0].score}
    if len(captions) > 1:
        record["captions"] = [{"caption": c.caption, "score": c.score} for c in captions]
    return record
