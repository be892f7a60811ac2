"""A run put together: device, setup, data loaders, optimizer and step object, restored from a checkpoint when
the run resumes. The loop (loop.py) then only draws batches and calls the step."""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from captionkit.config import TrainConfig
from captionkit.data.dataset import Batch, CaptionDataset, collate
from captionkit.data.records import CaptionRecord
from captionkit.errors import ConfigError, InputError
from captionkit.run_layout import CHECKPOINTS, step_of
from captionkit.shards import container_runs
from captionkit.training import checkpoint as ckpt
from captionkit.training.checks import (
    check_lengths,
    check_resumed_styles,
    check_run_dir,
    check_styles_learnable,
    check_validation,
)
from captionkit.training.distributed import Distributed
from captionkit.training.features import encode_images
from captionkit.training.resume import (
    LoopState,
    broadcast_path,
    find_resume_checkpoint,
    keep_checkpoint_model,
    restore_training_checkpoint,
    save_training_checkpoint,
    saved_steps,
)
from captionkit.training.run_log import RunLog
from captionkit.training.sampling import SampleStream
from captionkit.training.schedule import lr_at
from captionkit.training.setup import (
    Setup,
    build_optimizer,
    drop_empty_captions,
    prepared_setup,
    scst_records,
    scst_reward,
    seed_everything,
)
from captionkit.training.shard_stream import ShardStream
from captionkit.training.stages import Stages
from captionkit.training.state import capture_rng
from captionkit.training.steps import (
    Autocast,
    CrossEntropyStep,
    ScstStep,
    TrainingStep,
    autocast_for,
    make_placeholder,
)
from captionkit.training.summary import log_summary, resume_line, summary_lines
from captionkit.training.validation import Validation
from captionkit.wording import plural

logger = logging.getLogger("captionkit.training")


@dataclass
class Run:
    """Everything the loop needs, built by :func:`prepare_run`."""

    config: TrainConfig
    run_dir: Path
    parallel: Distributed
    setup: Setup
    step: TrainingStep
    stages: Stages
    stream: SampleStream | ShardStream
    batches: Iterator[Batch]
    train_size: int  # samples in the training data: a whole pass of unreadable ones stops the run
    validation: Validation | None
    state: LoopState
    run_log: RunLog | None
    resumed_from: Path | None
    empty_captions: int

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / CHECKPOINTS

    def close(self) -> None:
        """Stop the training loader's worker processes now. torch leaves persistent workers to the loader's
        ``__del__``; when garbage collection reaches it, the queues that tell the workers to stop are often torn
        down first, and each worker then costs a 5-second join before it is killed (seconds at the end of a run,
        or in the middle of whatever the process does next)."""
        shutdown = getattr(self.batches, "_shutdown_workers", None)  # torch's multi-process loader iterator
        if shutdown is not None:
            shutdown()

    def save(self, name: str, every_rank: bool = True) -> None:
        """A resumable checkpoint ``checkpoints/name``. Called by every process (``every_rank``) to gather each
        one's RNG states, or by rank 0 alone."""
        rng = [capture_rng()]
        if every_rank and self.parallel.enabled:
            rng = self.parallel.gather(rng[0])
        if self.parallel.is_main:
            optimizer, scaler = self.step.optimizer, self.step.scaler
            directory = self.checkpoints / name
            save_training_checkpoint(directory, self.setup, self.config, self.state, optimizer, scaler, rng)

    def draw_micro_batches(self) -> list[Batch]:
        """The step's ``grad_accumulation`` micro-batches, their skipped and unreadable samples counted."""
        micro = []
        for _ in range(self.config.train.grad_accumulation):
            batch = next(self.batches)
            self.state.cursor += self.stream.global_batch
            self.state.skipped += batch.skipped
            for bad in batch.unreadable:
                if bad.image not in self.state.unreadable:
                    self.state.unreadable[bad.image] = bad.reason
                    logger.warning("skipping unreadable training image %s: %s", bad.image, bad.reason)
            micro.append(batch)
        return micro

    def set_lr(self) -> float:
        """The schedule's learning rate for the current step, set on every parameter group."""
        train = self.config.train
        lr = lr_at(self.state.step, train.lr, train.warmup_steps, train.steps, train.min_lr_ratio, train.schedule)
        for group in self.step.optimizer.param_groups:
            group["lr"] = lr
        return lr


def training_device(config: TrainConfig) -> tuple[Distributed, torch.device]:
    parallel = Distributed.from_env(cpu=config.train.device == "cpu")
    device = parallel.device()
    if config.train.device == "cuda" and device.type != "cuda":
        raise ConfigError("train.device", "cuda asked for, but torch sees no CUDA GPU")
    return parallel, device


CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")  # cuBLAS's settings under which its sums are deterministic


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """cuDNN and cuBLAS pick deterministic kernels while the run lasts (what exact resume needs on a GPU)."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    deterministic_cublas()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def deterministic_cublas() -> None:
    """Set :data:`CUBLAS_WORKSPACE` for deterministic cuBLAS sums. PyTorch reads it once, when it first calls
    cuBLAS; in a process that already used CUDA, setting it would change nothing (and silence PyTorch's own check),
    so it is left alone and one warning line says what to do. A deterministic value set beforehand is kept."""
    current = os.environ.get(CUBLAS_WORKSPACE)
    if current in DETERMINISTIC_WORKSPACES:
        return
    if current is None and not torch.cuda.is_initialized():
        os.environ[CUBLAS_WORKSPACE] = DETERMINISTIC_WORKSPACES[0]
        return
    if not torch.cuda.is_available():  # no cuBLAS in this run: nothing to warn about
        return
    if current is None:
        reason = f"CUDA was in use before {CUBLAS_WORKSPACE} could be set"
    else:
        reason = f"{CUBLAS_WORKSPACE}={current} is not one of cuBLAS's deterministic settings"
    logger.warning(
        "train.deterministic: %s, so cuBLAS sums may differ run to run; set %s=%s before Python starts",
        reason,
        CUBLAS_WORKSPACE,
        DETERMINISTIC_WORKSPACES[0],
    )


def prepare_run(config: TrainConfig, run_dir: Path, setup: Setup | None, resume: bool | None) -> Run:
    """Find the checkpoint to resume from, build the setup on the device, the data and the step; restore."""
    check_run_dir(config, run_dir)
    parallel, device = training_device(config)
    autocast = autocast_for(config.train.precision, device)  # a precision the device cannot run fails here
    resume_from = find_resume_checkpoint(config, run_dir / CHECKPOINTS, resume) if parallel.is_main else None
    if parallel.enabled:
        resume_from = broadcast_path(resume_from)
    if resume_from is not None:
        config = keep_checkpoint_model(config, resume_from)
    seed_everything(config.train.seed + parallel.rank)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    setup = prepared_setup(config, setup, resume_from)
    check_resumed_styles(config, setup.tokenizer, resume_from)
    check_lengths(config, setup.model)
    check_validation(config, setup.val_records, setup.train_records)
    setup.model.to(device).train()
    train_records, empty_captions = _usable_records(config, setup)
    stages = Stages(setup.model, config.train.stages)
    check_styles_learnable(config, setup.model, stages)
    if parallel.is_main:  # before the images are cached or encoded: what the wait is for
        start = (step_of(resume_from) or 0) if resume_from is not None else 0
        log_summary(summary_lines(config, setup, stages, empty_captions, device, parallel.world_size, start))
    train_data = _training_data(config, setup, train_records, stages, device, autocast, parallel)
    step = _step(config, setup, train_data, device, parallel)
    state, restore_rng = LoopState(), None
    if resume_from is not None:
        state, restore_rng = restore_training_checkpoint(
            resume_from, setup.model, step.optimizer, step.scaler, parallel.rank
        )
        if parallel.is_main:
            logger.info("%s", resume_line(config, state, resume_from, saved_steps(resume_from)))
    stream, batches = _batches(config, setup, train_data, train_records, state, parallel, device)
    validation = _validation(config, setup, device) if parallel.is_main else None
    run_log = None
    if parallel.is_main:
        run_log = RunLog(run_dir, state.step if resume_from else None, config.train.tensorboard)
    if resume is False and parallel.is_main:  # --no-resume: starting over, now that everything is checked
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    (run_dir / ckpt.COMPLETE).unlink(missing_ok=True)  # the run directory's model is about to be replaced
    if restore_rng is not None:
        restore_rng()  # last: building the data loader draws from torch's generator
    return Run(
        config, run_dir, parallel, setup, step, stages, stream, batches, len(train_data), validation, state,
        run_log, resume_from, empty_captions,
    )  # fmt: skip


def _usable_records(config: TrainConfig, setup: Setup) -> tuple[list[CaptionRecord], int]:
    """The training records without empty captions (and, for SCST, one per image, or per image and style: see
    :func:`scst_records`); the empty captions counted, those the readers dropped included. No records for streamed
    shards (the stream reads them)."""
    train_records, empty = drop_empty_captions(setup.train_records)
    empty += setup.empty_captions
    if empty:
        logger.warning("dropped %s", plural(empty, "empty training caption"))
    if setup.train_shards is not None:
        return [], empty
    if not train_records:
        raise InputError(config.data.train, "no training captions (all are empty)")
    if config.train.objective == "scst":  # batches of images, each rewarded against all its training references
        train_records = scst_records(config, train_records)
    return train_records, empty


def _step(
    config: TrainConfig, setup: Setup, data: CaptionDataset | ShardStream, device: torch.device, parallel: Distributed
) -> TrainingStep:
    optimizer = build_optimizer(setup.model, config, device)
    placeholder = None
    if parallel.enabled:
        features = data.features if isinstance(data, CaptionDataset) else None
        placeholder = make_placeholder(features, setup.preprocessing.size, setup.model)
    if config.train.objective == "scst":
        # The reward's references: every training caption of an image, not only the one SCST batches carry.
        reward = scst_reward(config, drop_empty_captions(setup.train_records)[0])
        return ScstStep(setup.model, optimizer, config.train, device, setup.tokenizer, reward, parallel, placeholder)
    return CrossEntropyStep(setup.model, optimizer, config.train, device, parallel, placeholder)


def _dataset(config: TrainConfig, setup: Setup, records: list[CaptionRecord], features: Any = None) -> CaptionDataset:
    cache = config.data.cache_images and features is None
    data = CaptionDataset(
        records, setup.tokenizer, setup.preprocessing, config.data.max_length, cache_images=cache, features=features
    )
    if cache:
        _cache_images(data)
    return data


CACHE_REPORT_SECONDS = 5.0


def _cache_images(data: CaptionDataset) -> None:
    """Fill the image cache now, logging "caching N images", then each tenth done at most every
    ``CACHE_REPORT_SECONDS`` (minutes of silence otherwise in a run whose stderr is no terminal: no progress bar
    there), and the end."""
    started = time.perf_counter()
    total = len({str(record.image_path) for record in data.records})
    logger.info("caching %s", plural(total, "image"))
    every = max(1, total // 10)
    last = started

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done == total or (done % every == 0 and now - last >= CACHE_REPORT_SECONDS):
            logger.info("cached %d/%d images (%.1f s)", done, total, now - started)
            last = now

    data.cache_all(report)


def _training_data(
    config: TrainConfig,
    setup: Setup,
    records: list[CaptionRecord],
    stages: Stages,
    device: torch.device,
    autocast: Autocast,
    parallel: Distributed,
) -> CaptionDataset | ShardStream:
    """The training samples: pixels, or cached encoder features when no stage trains the encoder; shards are
    streamed (pixels always)."""
    train = config.train
    if setup.train_shards is not None:
        if config.data.cache_images or (train.cache_features and stages.encoder_always_frozen()):
            logger.info("training streams shards: images and encoder features are not cached")
        return ShardStream(
            setup.train_shards, setup.tokenizer, setup.preprocessing, config.data.max_length, train.batch_size,
            train.seed, parallel.rank, parallel.world_size, config.data.shuffle_buffer,
        )  # fmt: skip
    data = _dataset(config, setup, records)
    if not (config.train.cache_features and stages.encoder_always_frozen()):
        return data
    started = time.perf_counter()
    features = encode_images(setup.model, data, records, device, config.train.batch_size, autocast)
    seconds = time.perf_counter() - started
    logger.info("encoder frozen: cached features of %s in %.1f s", plural(len(features), "image"), seconds)
    return _dataset(config, setup, records, features)


def _batches(
    config: TrainConfig,
    setup: Setup,
    data: CaptionDataset | ShardStream,
    records: list[CaptionRecord],
    state: LoopState,
    parallel: Distributed,
    device: torch.device,
) -> tuple[SampleStream | ShardStream, Iterator[Batch]]:
    """The order of the training samples and this process's micro-batches, from the state's cursor on."""
    workers = config.data.workers
    if isinstance(data, ShardStream):
        data.start = state.cursor // data.global_batch
        slots = data.slots(workers)
        if len(data) < slots:
            reason = f"{len(data)} training captions cannot be split over {slots} readers (processes x data.workers)"
            raise InputError(config.data.train, reason)
        if state.data_slots and state.data_slots != slots:
            logger.warning(
                "resuming with %d shard readers (processes x data.workers) instead of %d: the samples' order "
                "differs from the interrupted run's", slots, state.data_slots,
            )  # fmt: skip
        state.data_slots = slots
        with _no_worker_count_warning():
            return data, iter(_loader(setup, data, device, workers, batch_size=None))
    blocks = container_runs(record.image_path for record in records)  # shards: read one at a time
    train = config.train
    stream = SampleStream(len(data), train.batch_size, train.seed, parallel.rank, parallel.world_size, blocks)
    with _no_worker_count_warning():
        return stream, iter(_loader(setup, data, device, workers, batch_sampler=stream.batches(state.cursor)))


# torch warns as the loader is built, and again as its workers start, when data.workers exceeds the CPUs this
# process may use: the user's number is kept, and the run's summary says so once (summary.py).
TOO_MANY_WORKERS = r"This DataLoader will create \d+ worker processes in total"


@contextmanager
def _no_worker_count_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TOO_MANY_WORKERS, category=UserWarning)
        yield


def _loader(
    setup: Setup, data: CaptionDataset | ShardStream, device: torch.device, workers: int, **batching: Any
) -> DataLoader:
    """Worker processes stay up between passes; on a GPU, batches come in page-locked memory (non-blocking
    copies)."""
    return DataLoader(
        data,
        collate_fn=partial(collate, pad_token_id=setup.tokenizer.pad_token_id),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        **batching,
    )


def _validation(config: TrainConfig, setup: Setup, device: torch.device) -> Validation | None:
    records, _ = drop_empty_captions(setup.val_records)
    if not records:
        return None
    data = _dataset(config, setup, records)
    # In this process: a new worker pool per evaluation would cost more than it saves on the few batches.
    return Validation(_loader(setup, data, device, 0, batch_size=config.train.batch_size), data)
