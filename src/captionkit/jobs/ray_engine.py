"""``caption --engine ray``: the same job as a Ray Data pipeline, on a laptop or a cluster with one command.

Inputs (their positions and paths) -> decode and preprocess as CPU tasks -> a pool of captioner actors (one per
GPU, or ``workers`` on CPU) -> records streamed back to this process in input order and written by the usual
:class:`~captionkit.jobs.outputs.RecordWriter`, so ``--resume``, ``--format`` and ``merge`` work as for the default
engine. Ray retries the tasks of a dead worker and restarts a dead actor, so a lost process costs time, not records.
Without ``ray_address`` Ray starts locally. Ray is the optional extra ``captionkit[ray]``. Progress: a line on
stderr every ``PROGRESS_EVERY`` seconds and at the end (images, images/s, errors), beside the caller's bar.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from captionkit.decoding import DecodingConfig
from captionkit.errors import InputError
from captionkit.images import ImageLimits, Preprocessing
from captionkit.jobs.batch import JobSummary
from captionkit.jobs.outputs import RecordWriter
from captionkit.jobs.pipeline import ImageFiles
from captionkit.jobs.throughput import Throughput

INSTALL = "needs Ray: pip install 'captionkit[ray]'"
PROGRESS_EVERY = 10.0  # seconds between progress lines


@dataclass(frozen=True)
class RaySettings:
    """Where Ray runs (``None``: a local Ray started here), and the captioner actors: how many, GPUs each."""

    address: str | None
    actors: int
    gpus_per_actor: float
    dtype: str = "fp32"  # the actors' weights (--dtype)


def require_ray() -> Any:
    """The ``ray`` module; without it, one line on how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine", INSTALL) from None
    return ray


def _decode(batch: dict[str, np.ndarray], preprocessing: Preprocessing, limits: ImageLimits) -> dict[str, np.ndarray]:
    """A CPU task: image paths -> preprocessed pixels (zeros for a bad image) and the one-line error, if any."""
    files = ImageFiles([str(path) for path in batch["image"]], preprocessing, limits)  # the default engine's reader
    height, width = preprocessing.size
    pixels = np.zeros((len(files), 3, height, width), dtype=np.float32)
    errors = []
    for row in range(len(files)):
        _, decoded, error = files[row]
        if decoded is not None:
            pixels[row] = decoded
        errors.append(error or "")
    return {**batch, "pixels": pixels, "error": np.array(errors, dtype=object)}


class _CaptionActor:
    """One captioner, loaded once per actor; a batch of pixels -> one JSON record per image."""

    def __init__(self, model: str, device: str | None, config: DecodingConfig, dtype: str) -> None:
        from captionkit.api import Captioner

        self.captioner = Captioner.from_pretrained(model, device=device, dtype=dtype)
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from captionkit.jobs.batch import caption_pixels, caption_record

        good = [row for row, error in enumerate(batch["error"]) if not error]
        pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][good])).to(
            self.captioner.device, self.captioner.dtype
        )
        positions = [int(batch["position"][row]) for row in good]
        found = dict(zip(good, caption_pixels(self.captioner, pixels, positions, self.config), strict=True))
        records = [
            caption_record(Path(str(image)), found[row]) if row in found else {"image": str(image), "error": error}
            for row, (image, error) in enumerate(zip(batch["image"], batch["error"], strict=True))
        ]
        return {"record": np.array([json.dumps(record) for record in records], dtype=object)}


def caption_on_ray(
    todo: Sequence[tuple[int, Path]],
    model: str,
    device: str | None,
    config: DecodingConfig,
    preprocessing: Preprocessing,
    limits: ImageLimits,
    writer: RecordWriter,
    batch_size: int,
    settings: RaySettings,
    on_progress: Callable[[int], None] | None = None,
) -> JobSummary:
    """Caption ``todo`` (position, path) on Ray and write the records in input order."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # records in input order, as the default engine writes them
    context.enable_progress_bars = False
    items = [{"position": position, "image": str(path)} for position, path in todo]
    dataset = ray.data.from_items(items).map_batches(
        _decode, fn_kwargs={"preprocessing": preprocessing, "limits": limits}, batch_size=batch_size
    )
    dataset = dataset.map_batches(
        _CaptionActor,
        fn_constructor_args=(model, device, config, settings.dtype),
        batch_size=batch_size,
        concurrency=settings.actors,
        num_gpus=settings.gpus_per_actor,
        num_cpus=0.5,  # half a CPU each: whole ones could take every CPU and starve the decoding tasks
        max_restarts=-1,  # a killed actor comes back and its batches are retried
        max_task_retries=-1,
    )
    summary = JobSummary()
    throughput = Throughput(len(todo), PROGRESS_EVERY)
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        records = [json.loads(text) for text in batch["record"]]
        writer.write(records)
        errors = sum("error" in record for record in records)
        summary.images += len(records)
        summary.errors += errors
        summary.captioned += len(records) - errors
        if on_progress is not None:
            on_progress(len(records))
        line = throughput.add(len(records), errors)
        if line is not None:
            print(f"ray: {line}", file=sys.stderr)
    return summary
