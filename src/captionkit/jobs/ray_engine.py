"""``caption --engine ray``: the same job as a Ray Data pipeline, on a laptop or a cluster with one command.

Inputs (their positions and paths, in the default engine's batches) -> decode and preprocess as CPU tasks -> a pool
of captioner actors (one per GPU, or ``workers`` on CPU), each running a known number of torch threads -> records
streamed back to this process in input order and written by the usual
:class:`~captionkit.jobs.outputs.RecordWriter`, so ``--resume``, ``--format`` and ``merge`` work as for the default
engine. Ray runs a decode task again when its worker process dies (up to ``DECODE_RETRIES`` times; then the job stops
in one line, the records before that batch written) and restarts a dead actor, retrying its batches, so a lost
process costs time, not records.
The driver streams the inputs: it reads them as it goes and hands Ray ``WINDOW_BATCHES`` batches at a time, one
Ray Data run each, so it holds a window of paths, never one object per image of the job (each window starts its
actors, and so loads the model, anew: the price of a bounded driver, paid every ``WINDOW_BATCHES`` batches).
Without ``ray_address`` Ray starts locally. Ray is the optional extra ``captionkit[ray]``. Progress: a line on
stderr every ``PROGRESS_EVERY`` seconds and at the end (images, images/s, errors), beside the caller's bar.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from captionkit.decoding import DecodingConfig
from captionkit.errors import CaptionkitError, InputError, first_line
from captionkit.images import ImageLimits, Preprocessing
from captionkit.jobs.batch import JobSummary
from captionkit.jobs.outputs import Record, RecordWriter
from captionkit.jobs.pipeline import ImageFiles
from captionkit.jobs.throughput import Throughput

INSTALL = "needs Ray: pip install 'captionkit[ray]'"
PROGRESS_EVERY = 10.0  # seconds between progress lines
CONNECT_TIMEOUT = 10.0  # seconds to wait for a --ray-address to answer
# Runs of a decode task after its worker died, as Ray's default for tasks; not Ray Data's default (forever): an image
# that kills its decoder every time would hang the job instead of stopping it.
DECODE_RETRIES = 3
# Batches per Ray Data run: the driver holds one window's paths. Large, since each run loads the model again.
WINDOW_BATCHES = 4096


@dataclass(frozen=True)
class RaySettings:
    """Where Ray runs (``None``: a local Ray started here), and the captioner actors: how many, GPUs and torch
    threads each; ``None`` for actors or GPUs is auto (see :func:`actor_pool`)."""

    address: str | None
    actors: int | None
    gpus_per_actor: float | None
    dtype: str = "fp32"  # the actors' weights (--dtype)
    threads: int = 1  # torch threads per actor (--threads; the default engine takes the same setting)


def require_ray() -> Any:
    """The ``ray`` module; without it, one line on how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine", INSTALL) from None
    return ray


def connect(address: str | None) -> Any:
    """Join the Ray cluster at ``address`` (``auto``: the one running here), or start Ray locally (``None``).

    An address nobody answers at fails in one line: ``ray.init`` would wait for it for many minutes.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address is not None and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT).close()
        except (OSError, ValueError) as error:
            reason = "expected auto or HOST:PORT" if isinstance(error, ValueError) else first_line(error)
            raise InputError("--ray-address", f"no Ray cluster answers at {address} ({reason})") from None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise InputError("--ray-address", f"cannot join Ray at {address}: {first_line(error)}") from None
    return ray


def actor_pool(settings: RaySettings, resources: Mapping[str, float], device: str | None) -> tuple[int, float]:
    """``(actors, GPUs each)`` on a cluster with ``resources`` (Ray's ``cluster_resources()``).

    GPUs each, auto: 1 when the cluster has a GPU (and ``device`` is not ``cpu``), else 0. Actors, auto: one per
    GPU share, or on CPUs half the cluster's CPUs (the other half decodes images), at least 1.
    """
    cluster_gpus = float(resources.get("GPU", 0.0))
    gpus = settings.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 and device != "cpu" else 0.0
    if gpus > cluster_gpus:
        raise InputError("--gpus-per-worker", f"{gpus:g} GPUs per worker, but the Ray cluster has {cluster_gpus:g}")
    actors = settings.actors
    if actors is None:
        actors = int(cluster_gpus // gpus) if gpus else int(resources.get("CPU", 2.0)) // 2
    return max(1, actors), gpus


def _batches(todo: Iterable[tuple[int, Path]], batch_size: int) -> Iterator[dict[str, str]]:
    """The default engine's batches (``batch_size`` consecutive images of ``todo``), one row each, read lazily.

    A Ray batch is one row, so an actor decodes exactly the images the default engine puts together: beam search
    over a different batch can round differently, and records must be equal by design, not by luck.
    """
    items = iter(todo)
    while chunk := [[position, str(path)] for position, path in itertools.islice(items, batch_size)]:
        yield {"items": json.dumps(chunk)}


def _windows(todo: Iterable[tuple[int, Path]], batch_size: int) -> Iterator[list[dict[str, str]]]:
    """:func:`_batches` of ``todo``, ``WINDOW_BATCHES`` at a time."""
    batches = _batches(todo, batch_size)
    while window := list(itertools.islice(batches, WINDOW_BATCHES)):
        yield window


def _decode(row: dict[str, Any], preprocessing: Preprocessing, limits: ImageLimits) -> dict[str, Any]:
    """A CPU task: one batch's image paths -> preprocessed pixels of its good images and each image's error."""
    items = json.loads(row["items"])
    files = ImageFiles(preprocessing, limits)  # the default engine's reader
    decoded = [files[(position, path)] for position, path in items]
    good = [pixels for _, _, pixels, _ in decoded if pixels is not None]
    height, width = preprocessing.size
    pixels = np.stack(good).astype(np.float32) if good else np.zeros((0, 3, height, width), np.float32)
    errors = [error or "" for _, _, _, error in decoded]
    return {
        "items": row["items"],
        "errors": json.dumps(errors),
        "pixels": pixels.tobytes(),
        "size": f"{height}x{width}",
    }


class _CaptionActor:
    """One captioner, loaded once per actor; one batch of pixels -> its records as a JSON list."""

    def __init__(self, model: str, device: str | None, config: DecodingConfig, dtype: str, threads: int) -> None:
        import torch

        from captionkit.api import Captioner

        # A known thread count, not Ray's OMP_NUM_THREADS: float reductions depend on it, so --threads N gives
        # the default engine's scores to the last digit.
        torch.set_num_threads(threads)
        self.captioner = Captioner.from_pretrained(model, device=device, dtype=dtype)
        self.config = config

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        import torch

        from captionkit.jobs.batch import caption_pixels, caption_record

        items, errors = json.loads(row["items"]), json.loads(row["errors"])
        height, width = (int(side) for side in row["size"].split("x"))
        array = np.frombuffer(row["pixels"], dtype=np.float32).reshape(-1, 3, height, width)
        pixels = torch.from_numpy(array.copy()).to(self.captioner.device, self.captioner.dtype)
        good = [index for index, error in enumerate(errors) if not error]
        positions = [items[index][0] for index in good]
        found = dict(zip(good, caption_pixels(self.captioner, pixels, positions, self.config), strict=True))
        records = [
            caption_record(Path(path), found[index]) if index in found else {"image": path, "error": errors[index]}
            for index, (_, path) in enumerate(items)
        ]
        return {"records": json.dumps(records)}


def caption_on_ray(
    todo: Iterable[tuple[int, Path]],
    total: int,
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
    """Caption ``todo`` (position, path; ``total`` of them, read as a stream) on Ray and write the records in input
    order."""
    if total == 0:
        return JobSummary()
    ray = connect(settings.address)
    actors, gpus = actor_pool(settings, ray.cluster_resources(), device)
    print(f"ray: {actors} captioner {'actor' if actors == 1 else 'actors'}, {gpus:g} GPUs each", file=sys.stderr)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # records in input order, as the default engine writes them
    context.enable_progress_bars = False
    actor_args = (model, device, config, settings.dtype, settings.threads)
    summary = JobSummary()
    throughput = Throughput(total, PROGRESS_EVERY)
    for window in _windows(todo, batch_size):
        for records in _records(_pipeline(ray, window, preprocessing, limits, actor_args, actors, gpus), ray):
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


def _pipeline(
    ray: Any,
    batches: list[dict[str, str]],
    preprocessing: Preprocessing,
    limits: ImageLimits,
    actor_args: tuple[Any, ...],
    actors: int,
    gpus: float,
) -> Any:
    """The Ray dataset of ``batches``: a decode task per batch, then the captioner actors."""
    dataset = ray.data.from_items(batches, override_num_blocks=len(batches))
    decode_args = {"preprocessing": preprocessing, "limits": limits}
    with warnings.catch_warnings():
        # max_retries travels as a Ray remote argument, which Ray 2.60 deprecates (removal planned for 2.64, hence
        # the pin below it) without a named parameter for it yet: its warning on every run is noise to the user.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = dataset.map(_decode, fn_kwargs=decode_args, max_retries=DECODE_RETRIES)
    return dataset.map(
        _CaptionActor,
        fn_constructor_args=actor_args,
        compute=ray.data.ActorPoolStrategy(size=actors),  # `concurrency=actors`, deprecated since Ray 2.51
        num_gpus=gpus,
        num_cpus=0.5,  # half a CPU each: whole ones could take every CPU and starve the decoding tasks
        # Ray Data's actor defaults (max_restarts=-1, max_task_retries=-1): a killed actor comes back and its
        # batches are retried. Passing them again is deprecated.
    )


def _records(dataset: Any, ray: Any) -> Iterator[list[Record]]:
    """Each batch's records, in input order. A task whose worker died on every try stops the job in one line."""
    try:
        for row in dataset.iter_rows():
            yield json.loads(row["records"])
    except ray.exceptions.WorkerCrashedError as error:
        tries = DECODE_RETRIES + 1
        reason = f"a worker process died on each of {tries} tries of the same batch ({first_line(error)})"
        raise CaptionkitError(f"--engine ray: {reason}; the records before that batch are written") from None
