"""The training loop: one explicit loop, readable in one sitting.

Each optimizer step: pick the stage (which parameter groups train), set the learning rate from :func:`lr_at`, draw
``grad_accumulation`` micro-batches, forward under autocast with teacher forcing, loss summed over real tokens and
divided by the step's token count (so accumulation and data parallelism match one big batch), backward, unscale,
clip, AdamW step. Every ``eval_every`` steps: validation loss, perplexity and CIDEr-D, the best checkpoint, early
stopping. Every ``checkpoint_every`` steps: a resumable checkpoint (model, optimizer, grad scaler, RNG states and the
position in the data). SIGTERM or Ctrl-C saves one and returns. At the end the final model is written into the run
directory, where ``Captioner.from_pretrained`` and plain ``transformers`` load it, with ``metrics.jsonl`` and
``curves.png`` beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from captionkit import __version__
from captionkit.config import TrainConfig
from captionkit.data.dataset import Batch, CaptionDataset, collate
from captionkit.data.records import CaptionRecord
from captionkit.data.sources import load_records
from captionkit.data.splits import first_caption_per_image, split_by_image
from captionkit.data.styles import first_caption_per_style, mix_styles
from captionkit.decoding.sampling import SEED_MODULUS
from captionkit.errors import ConfigError, InputError
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel, Encoded
from captionkit.models.registry import create_model, load_model, preprocessing_for, train_tokenizer
from captionkit.text import CaptionTokenizer
from captionkit.text.styles import add_style_tokens
from captionkit.training import checkpoint as ckpt
from captionkit.training.curves import draw_curves
from captionkit.training.distributed import Distributed
from captionkit.training.features import encode_images
from captionkit.training.loss import caption_loss_sum
from captionkit.training.run_log import ProgressLine, RunLog
from captionkit.training.sampling import SampleStream
from captionkit.training.schedule import lr_at
from captionkit.training.scst import (
    CiderReward,
    Rollout,
    SampleScorer,
    encode_for_sampling,
    policy_loss_sums,
    rollout,
)
from captionkit.training.stages import Stages
from captionkit.training.state import capture_rng, load_optimizer_state, optimizer_state, restore_rng
from captionkit.training.validation import evaluate_loss, references, validation_cider

LogFn = Callable[[dict[str, Any]], None]
Autocast = Callable[[], AbstractContextManager[object]]
logger = logging.getLogger("captionkit.training")
# A micro-batch of either step kind (cross-entropy: a Batch; SCST: a Batch with its rollout).
T = TypeVar("T")

CHECKPOINTS = "checkpoints"
CURVES = "curves.png"
# Config keys a resumed run may change without being a different run.
RESUMABLE_CHANGES = (
    "train.steps",
    "train.max_seconds",
    "train.threads",
    "train.log_every",
    "train.patience",
    "train.eval_every",
    "train.eval_images",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "data.workers",
)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    seconds: float
    train_loss: float
    val_loss: float | None
    val_perplexity: float | None
    skipped_samples: int
    history: list[dict[str, Any]] = field(default_factory=list)
    val_cider: float | None = None
    best_metric: float | None = None
    unreadable_images: int = 0
    empty_captions: int = 0
    # Stopped by SIGTERM/SIGINT after saving a checkpoint; the final model was not written.
    interrupted: bool = False
    stopped_early: bool = False
    resumed_from: Path | None = None


@dataclass
class Setup:
    """Everything a run trains with, built from the config."""

    model: CaptionModel
    tokenizer: CaptionTokenizer
    preprocessing: Preprocessing
    train_records: list[CaptionRecord]
    val_records: list[CaptionRecord]


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint's trainer_state.json."""

    step: int = 0
    cursor: int = 0  # samples of the endless data stream consumed (sampling.py)
    running_loss: float = 0.0
    seconds: float = 0.0
    skipped: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # image path -> reason
    best: float | None = None
    evals_since_best: int = 0
    val: dict[str, float | None] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # SCST: running means of reward, reward_baseline, sample_length and entropy (like running_loss).
    scst: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def drop_empty_captions(records: list[CaptionRecord]) -> tuple[list[CaptionRecord], int]:
    kept = [record for record in records if record.caption.strip()]
    return kept, len(records) - len(kept)


def load_all_records(specs: str | list[str]) -> list[CaptionRecord]:
    """The records of one dataset spec, or of several read as one dataset."""
    return [record for spec in ([specs] if isinstance(specs, str) else specs) for record in load_records(spec)]


def build_setup(config: TrainConfig, resume_from: Path | None = None) -> Setup:
    """Read the data, then get the tokenizer and model: pretrained ones, a checkpoint's to resume, or new ones."""
    if not config.data.train:
        raise InputError("data.train", "no training data given (a dataset file or directory, see README 'Data')")
    records = load_all_records(config.data.train)
    if config.data.val:
        train_records = [r for r in records if r.split in (None, "train")]
        val_records = load_all_records(config.data.val)
        val_records = [r for r in val_records if r.split in (None, "val", "dev", "validation")]
    else:
        train_records, val_records = split_by_image(records, config.data.val_fraction, config.train.seed)
    styles = config.data.styles
    if config.data.first_caption_only:
        pick = first_caption_per_style if styles else first_caption_per_image
        train_records, val_records = pick(train_records), pick(val_records)
    if not train_records:
        raise InputError(config.data.train, "no training captions after splitting")
    if styles:
        train_records = mix_styles(train_records, styles, config.train.seed, config.data.train)
        val_records = [r for r in val_records if r.style in styles]

    pretrained = config.model.pretrained
    if resume_from is not None:
        model, tokenizer, preprocessing = _from_checkpoint(resume_from)
    elif pretrained:
        pretrained = str(resolve_model_source(pretrained))  # a hub id's snapshot: tokenizer and preprocessing too
        model = load_model(pretrained)
        tokenizer = CaptionTokenizer.load(
            config.tokenizer.pretrained or pretrained,
            model.bos_token_id,
            model.eos_token_id,
            model.pad_token_id,
        )
        preprocessing = Preprocessing.load(pretrained)
        if styles:
            add_style_tokens(tokenizer, styles)
            if tokenizer.vocab_size > model.vocab_size:
                model.resize_vocabulary(tokenizer.vocab_size)
    else:
        if config.tokenizer.pretrained:
            tokenizer = CaptionTokenizer.load(config.tokenizer.pretrained)
        else:
            # The family picks the tokenizer kind: byte-level BPE (GPT-2 families) or words (cnn-lstm*).
            tokenizer = train_tokenizer(
                config.model.family,
                (r.caption for r in train_records if r.caption.strip()),
                config.tokenizer.vocab_size,
                config.tokenizer.lowercase,
            )
        if styles:
            add_style_tokens(tokenizer, styles)
        model = create_model(
            config.model.family,
            config.model.preset,
            tokenizer,
            config.model.position_init,
            config.model.encoder,
            config.model.decoder,
            **config.model.overrides,
        )
        preprocessing = preprocessing_for(model)
    return Setup(model, tokenizer, preprocessing, train_records, val_records)


# Position tables are not decayed either: weight decay would pull a sin-cos start back to zero.
_NO_DECAY_NAMES = ("position_embeddings", "wpe")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on biases, norms and position tables: the usual AdamW practice. Every parameter is listed, frozen
    # ones too: staged unfreezing turns them on later, and a parameter without a gradient is left alone by AdamW.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        keep = parameter.ndim < 2 or any(part in name for part in _NO_DECAY_NAMES)
        (no_decay if keep else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast(precision: str, device: torch.device) -> Autocast:
    if precision == "fp32":
        return nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision", "fp16 needs a CUDA GPU (its gradient scaler); use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


class StopSignal:
    """SIGTERM / SIGINT ask the loop to save a checkpoint and return; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def find_resume_checkpoint(config: TrainConfig, checkpoints: Path, resume: bool | None) -> Path | None:
    """The checkpoint to resume from: the newest COMPLETE one, if ``resume`` is None (auto) or True."""
    if resume is False:
        shutil.rmtree(checkpoints, ignore_errors=True)
        return None
    latest = ckpt.latest_checkpoint(checkpoints)
    if latest is None:
        if resume:
            raise InputError(checkpoints, "no complete checkpoint to resume from")
        return None
    saved = ckpt.read_training_state(latest)[0]["train_config"]
    changed = _changed_keys(saved, config.to_dict())
    if changed and not resume:
        raise ConfigError(
            changed[0],
            f"differs from the run in {checkpoints.parent}: pass --resume to continue it anyway, --no-resume to "
            "start over, or choose another output directory",
        )
    if changed:
        logger.info("resuming with changed settings: %s", ", ".join(changed))
    return latest


def _changed_keys(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict) and key != "overrides":
            keys += _changed_keys(old, new, f"{name}.")
        elif old != new and name not in RESUMABLE_CHANGES:
            keys.append(name)
    return keys


def train(
    config: TrainConfig,
    output_dir: str | Path,
    log: LogFn | None = None,
    setup: Setup | None = None,
    resume: bool | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train per ``config`` in run directory ``output_dir``; the final model is written there.

    ``resume``: None resumes from the newest complete checkpoint in ``output_dir/checkpoints`` when there is one
    and the config is the same; True resumes even with a changed config (and fails without a checkpoint); False
    discards the old checkpoints and starts over. ``progress`` shows a progress line on stderr.
    """
    run_dir = Path(output_dir)
    checkpoints = run_dir / CHECKPOINTS
    parallel = Distributed.from_env()
    device = parallel.device()
    autocast = _autocast(config.train.precision, device)
    if config.train.best_metric == "val_cider" and not config.train.eval_images:
        raise ConfigError("train.best_metric", "val_cider needs train.eval_images > 0")
    resume_from = find_resume_checkpoint(config, checkpoints, resume) if parallel.is_main else None
    if parallel.enabled:
        resume_from = _broadcast_path(resume_from)
    seed_everything(config.train.seed + parallel.rank)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    setup = _prepared_setup(config, setup, resume_from)
    model, tokenizer = setup.model.to(device), setup.tokenizer
    train_records, empty_captions = drop_empty_captions(setup.train_records)
    val_records, _ = drop_empty_captions(setup.val_records)
    if empty_captions:
        logger.warning("dropped %d empty training captions", empty_captions)
    if not train_records:
        raise InputError(config.data.train, "no training captions (all are empty)")
    model.train()
    scst = config.train.objective == "scst"
    reward = _scst_reward(config, train_records) if scst else None
    if scst:  # batches of images, each rewarded against all its training references
        train_records = first_caption_per_image(train_records)

    stages = Stages(model, config.train.stages)
    train_data = _training_data(config, setup, train_records, stages, device, autocast)
    val_data = _dataset(config, setup, val_records) if val_records and parallel.is_main else None
    val_loader = None
    if val_data is not None:
        pad = tokenizer.pad_token_id
        val_loader = DataLoader(val_data, batch_size=config.train.batch_size, collate_fn=lambda s: collate(s, pad))
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.train.weight_decay), lr=config.train.lr, betas=config.train.betas
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")
    state, restore_rng_states = LoopState(), None
    if resume_from is not None:
        state, restore_rng_states = _restore(resume_from, optimizer, scaler, parallel.rank)
        logger.info("resuming from %s (step %d)", resume_from, state.step)
    placeholder = _placeholder(train_data, setup.preprocessing, model) if parallel.enabled else None
    # What runs forward and backward, built again when a stage changes the trainable parameters (see _wrapped).
    trained_model: torch.nn.Module | None = None

    stream = SampleStream(
        len(train_data), config.train.batch_size, config.train.seed, parallel.rank, parallel.world_size
    )
    batches: Iterator[Batch] = iter(
        DataLoader(
            train_data,
            batch_sampler=stream.batches(state.cursor),  # type: ignore[arg-type]
            collate_fn=partial(collate, pad_token_id=tokenizer.pad_token_id),
            num_workers=config.data.workers,
        )
    )
    run_log = (
        RunLog(run_dir, state.step if resume_from else None, config.train.tensorboard) if parallel.is_main else None
    )
    emit = log or (lambda _: None)
    (run_dir / ckpt.COMPLETE).unlink(missing_ok=True)  # the run directory's model is about to be replaced

    def save(directory: Path, every_rank: bool = True) -> None:
        """Called by every process (``every_rank``) to gather each one's RNG states, or by rank 0 alone."""
        rng = [capture_rng()]
        if every_rank and parallel.enabled:
            rng = parallel.gather(rng[0])
        if parallel.is_main:
            _save_training_checkpoint(directory, setup, config, state, optimizer, scaler, rng)

    if restore_rng_states is not None:
        restore_rng_states()
    total_steps = config.train.steps
    started = time.perf_counter()
    seconds_before = state.seconds
    samples_seen = 0
    stopped_early = out_of_time = False
    last_saved = state.step if resume_from else -1
    stop_requested = False
    # Samples drawn since the last step that had a readable image: a whole pass of them means none is readable.
    unreadable_run = 0
    with StopSignal() as stop, ProgressLine(total_steps, state.step, progress and parallel.is_main) as line:
        while state.step < total_steps:
            # Every process must agree, or one saves (a collective) while the others wait elsewhere.
            stop_requested = parallel.any(stop.received is not None)
            if stop_requested:
                break
            if stages.apply(state.step) or trained_model is None:
                trained_model = None  # an old DDP's gradient hooks go with it
                trained_model = _wrapped(model, scst, parallel)
            micro = []
            for _ in range(config.train.grad_accumulation):
                batch = next(batches)
                state.cursor += stream.global_batch
                _count_skipped(state, batch)
                micro.append(batch)
            lr = lr_at(
                state.step,
                config.train.lr,
                config.train.warmup_steps,
                total_steps,
                config.train.min_lr_ratio,
                config.train.schedule,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            scst_stats: dict[str, float] = {}
            if reward is not None:
                seed = _scst_seed(config, state.step, stream.global_batch)
                scst_stats = _scst_optimizer_step(
                    trained_model,
                    model,
                    tokenizer,
                    micro,
                    reward,
                    seed,
                    optimizer,
                    scaler,
                    autocast,
                    config,
                    parallel,
                    placeholder,
                )
                loss = scst_stats.pop("loss", None)
            else:
                loss = _optimizer_step(
                    trained_model, model, micro, optimizer, scaler, autocast, config, parallel, device, placeholder
                )
            if loss is None:  # every image of the step was unreadable
                unreadable_run += stream.global_batch * config.train.grad_accumulation
                if unreadable_run >= len(train_data):
                    unreadable = len(state.unreadable)
                    raise InputError(config.data.train, f"no readable training image ({unreadable} unreadable)")
                continue
            unreadable_run = 0
            state.step += 1
            samples_seen += sum(len(b) for b in micro) * parallel.world_size
            state.running_loss = loss if state.step == 1 else 0.9 * state.running_loss + 0.1 * loss
            for key, value in scst_stats.items():  # reward statistics, smoothed like the loss
                state.scst[key] = 0.9 * state.scst.get(key, value) + 0.1 * value
            elapsed = time.perf_counter() - started
            state.seconds = seconds_before + elapsed
            # Every process must stop at the same step: rank 0's clock decides.
            out_of_time = parallel.broadcast_flag(
                bool(config.train.max_seconds) and state.seconds >= config.train.max_seconds
            )
            is_last = state.step == total_steps or out_of_time
            line.update(state.step, state.running_loss, lr, samples_seen / max(elapsed, 1e-9))
            evaluate = val_loader is not None and (state.step % config.train.eval_every == 0 or is_last)
            if state.step % config.train.log_every == 0 or is_last or evaluate:
                entry: dict[str, Any] = {
                    "step": state.step,
                    "loss": round(state.running_loss, 5),
                    "lr": lr,
                    "seconds": round(state.seconds, 2),
                    "images_per_second": round(samples_seen / max(elapsed, 1e-9), 2),
                }
                entry |= {key: round(value, 5) for key, value in state.scst.items()}
                if state.skipped:
                    entry["skipped_samples"] = state.skipped
                if evaluate:
                    assert val_loader is not None and val_data is not None
                    entry |= _validate(model, tokenizer, val_loader, val_data, config, device, autocast)
                    state.val = {k: entry[k] for k in ("val_loss", "val_perplexity", "val_cider") if k in entry}
                    if _improved(state, config):
                        save(checkpoints / ckpt.BEST, every_rank=False)
                    elif config.train.patience and state.evals_since_best >= config.train.patience:
                        stopped_early = True
                        entry["stopped_early"] = True
                if parallel.is_main:
                    state.history.append(entry)
                    assert run_log is not None
                    run_log.write(entry)
                    emit(entry)
            stopped_early = parallel.broadcast_flag(stopped_early)
            if config.train.checkpoint_every and state.step % config.train.checkpoint_every == 0:
                save(checkpoints / ckpt.step_name(state.step))
                last_saved = state.step
                if parallel.is_main:
                    ckpt.prune_checkpoints(checkpoints, config.train.keep_checkpoints)
            if stopped_early or out_of_time:
                break
        interrupted = stop_requested and state.step < total_steps and not (stopped_early or out_of_time)
    if (interrupted or config.train.checkpoint_every) and last_saved != state.step:
        save(checkpoints / ckpt.step_name(state.step))
        if parallel.is_main:
            ckpt.prune_checkpoints(checkpoints, config.train.keep_checkpoints)
    # Each process skipped the unreadable images it drew: the run's result and final model list them all.
    state.unreadable = {image: why for part in parallel.gather(state.unreadable) for image, why in part.items()}
    if parallel.is_main:
        assert run_log is not None
        run_log.close()
        draw_curves(state.history, run_dir / CURVES)
        if not interrupted:
            _publish_final_model(run_dir, setup, config, state)
    parallel.barrier()
    return _result(run_dir, state, empty_captions, interrupted, stopped_early, resume_from)


def _wrapped(model: CaptionModel, scst: bool, parallel: Distributed) -> torch.nn.Module:
    """The module the loop trains: the model, or for SCST the SampleScorer around it (whose forward runs the encoder
    too), in DistributedDataParallel under a launcher.

    DDP all-reduces only the parameters that required a gradient when it was built: a stage that unfreezes more must
    get a new one (built by every process at the same step; it starts from rank 0's weights, equal anyway), or the
    unfrozen part would train apart on each process. Frozen parameters are left out of the all-reduce.
    """
    module: torch.nn.Module = SampleScorer(model) if scst else model
    if not parallel.enabled:
        return module
    return torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)


def _from_checkpoint(directory: Path) -> tuple[CaptionModel, CaptionTokenizer, Preprocessing]:
    model = load_model(directory)
    tokenizer = CaptionTokenizer.load(directory, model.bos_token_id, model.eos_token_id, model.pad_token_id)
    return model, tokenizer, Preprocessing.load(directory)


def _dataset(config: TrainConfig, setup: Setup, records: list[CaptionRecord], features: Any = None) -> CaptionDataset:
    return CaptionDataset(
        records,
        setup.tokenizer,
        setup.preprocessing,
        config.data.max_length,
        cache_images=config.data.cache_images and features is None,
        features=features,
    )


def _training_data(
    config: TrainConfig,
    setup: Setup,
    records: list[CaptionRecord],
    stages: Stages,
    device: torch.device,
    autocast: Autocast,
) -> CaptionDataset:
    """The training samples: pixels, or cached encoder features when no stage trains the encoder."""
    data = _dataset(config, setup, records)
    if not (config.train.cache_features and stages.encoder_always_frozen()):
        return data
    started = time.perf_counter()
    features = encode_images(setup.model, data, records, device, config.train.batch_size, autocast)
    seconds = time.perf_counter() - started
    logger.info("encoder frozen: cached features of %d images in %.1f s", len(features), seconds)
    return _dataset(config, setup, records, features)


def _prepared_setup(config: TrainConfig, setup: Setup | None, resume_from: Path | None) -> Setup:
    if setup is None:
        return build_setup(config, resume_from)
    if resume_from is None:
        return setup
    # A caller's records with the checkpoint's model, tokenizer and preprocessing.
    return Setup(*_from_checkpoint(resume_from), setup.train_records, setup.val_records)


def _broadcast_path(path: Path | None) -> Path | None:
    import torch.distributed as dist

    holder: list[Any] = [str(path) if path is not None else None]
    dist.broadcast_object_list(holder, 0)
    return Path(holder[0]) if holder[0] is not None else None


def _count_skipped(state: LoopState, batch: Batch) -> None:
    state.skipped += batch.skipped
    for bad in batch.unreadable:
        if bad.image not in state.unreadable:
            state.unreadable[bad.image] = bad.reason
            logger.warning("skipping unreadable training image %s: %s", bad.image, bad.reason)


def _optimizer_step(
    model: torch.nn.Module,
    raw_model: CaptionModel,
    micro: list[Batch],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast: Autocast,
    config: TrainConfig,
    parallel: Distributed,
    device: torch.device,
    placeholder: Batch | None = None,
) -> float | None:
    """Forward and backward every micro-batch, then one optimizer step; the step's mean token loss.

    A micro-batch whose images are all unreadable here but not on every process runs ``placeholder`` (see
    :func:`_agree`).
    """
    present = [batch if len(batch) else None for batch in micro]
    local_tokens = sum(int(batch.attention_mask[:, 1:].sum()) for batch in present if batch is not None)
    tokens, chosen, per_process = _agree(present, float(local_tokens), parallel)
    if tokens == 0:
        return None
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for index, batch in enumerate(chosen):
        with _sync(model, parallel, last=index == len(chosen) - 1):
            if batch is None:
                assert placeholder is not None  # another process holds data: only under DDP
                _placeholder_backward(raw_model, autocast, scaler, partial(_teacher_forced, model, placeholder, device))
                continue
            ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
            with autocast():
                logits = _teacher_forced(model, batch, device)
            loss_sum, _ = caption_loss_sum(logits, ids, mask, config.train.label_smoothing)
            # DDP averages gradients over processes: scale by their number so the result is the global-batch mean.
            loss = loss_sum * (parallel.world_size / tokens)
            auxiliary = raw_model.auxiliary_loss()
            if auxiliary is not None:
                loss = loss + auxiliary / per_process
            scaler.scale(loss).backward()
        total += float(loss_sum.detach())
    scaler.unscale_(optimizer)
    if config.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return parallel.sum([total])[0] / tokens


def _teacher_forced(model: torch.nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    encoded = Encoded(batch.features.to(device)) if batch.features is not None else None
    pixels = None if encoded is not None else batch.pixel_values.to(device)
    return model(pixels, batch.input_ids.to(device), batch.attention_mask.to(device), encoded=encoded)


def _placeholder(data: CaptionDataset, preprocessing: Preprocessing, model: CaptionModel) -> Batch:
    """One made-up sample shaped like the training data (zero pixels or features, the caption bos eos): what a
    process without data runs so that its backward pass joins the others' all-reduce."""
    ids = torch.tensor([[model.bos_token_id, model.eos_token_id]])
    features = None
    if data.features is not None:
        shape = next(value.shape for value in data.features.values() if isinstance(value, torch.Tensor))
        features = torch.zeros(1, *shape)
    pixels = torch.zeros(1, 3, *preprocessing.size) if features is None else torch.empty(0)
    return Batch(pixels, ids, torch.ones_like(ids), ["placeholder"], 0, features)


def _agree(
    items: Sequence[T | None], local_tokens: float, parallel: Distributed
) -> tuple[float, list[T | None], float]:
    """What this process runs in a step, agreed with the others: ``(tokens, chosen, per_process)``.

    ``items`` are this process's micro-batches, None where it has no data (every image unreadable). Under DDP each
    backward pass ends in an all-reduce the other processes wait for, so all run as many: ``chosen`` keeps the
    micro-batches that hold data on some process (None where this one runs the zero-weight placeholder, see
    :func:`_placeholder_backward`) and leaves out those empty everywhere. ``tokens``: ``local_tokens`` summed over
    the processes; ``per_process``: the micro-batches with data per process, over which auxiliary terms are means.
    """
    tokens, *holders = parallel.sum([local_tokens, *(float(item is not None) for item in items)])
    chosen = [item for item, holding in zip(items, holders, strict=True) if holding]
    return tokens, chosen, sum(holders) / parallel.world_size


def _sync(module: torch.nn.Module, parallel: Distributed, last: bool) -> AbstractContextManager[Any]:
    """DDP all-reduces the gradients on a step's last backward pass only (``no_sync`` before it)."""
    return nullcontext() if last or not parallel.enabled else module.no_sync()  # type: ignore[operator]


def _placeholder_backward(
    raw_model: CaptionModel,
    autocast: Autocast,
    scaler: torch.amp.GradScaler,
    logits_of: Callable[[], torch.Tensor],
) -> None:
    """Backward of 0 times the placeholder's logits: every parameter the forward uses gets a zero gradient, so the
    all-reduce sums the other processes' gradients alone. Run in eval mode: batch norm statistics stay, dropout
    draws nothing."""
    was_training = raw_model.training
    raw_model.eval()
    try:
        with autocast():
            logits = logits_of()
    finally:
        raw_model.train(was_training)
    raw_model.auxiliary_loss()  # the placeholder's own (an attention penalty) is dropped
    scaler.scale(logits.float().sum() * 0.0).backward()


def _scst_reward(config: TrainConfig, records: list[CaptionRecord]) -> CiderReward:
    """CIDEr-D against each training image's references (its neutral captions, or all when it has none); the
    document frequencies come from all of them, computed once. Samples start from bos: with style control
    (``data.styles``) SCST trains the neutral captions."""
    if config.data.styles:  # style mixing repeats records: each reference counts once
        records = list(dict.fromkeys(records))
    grouped = references(records, max_images=len(records))
    return CiderReward({image_id: [r.caption for r in group] for image_id, group in grouped.items()})


def _scst_seed(config: TrainConfig, step: int, global_batch: int) -> int:
    """The sampling seed of a step's first micro-batch: a function of the step alone, so a resumed run samples
    exactly what the uninterrupted one did. Image j of micro-batch m draws from seed + m * global_batch + j."""
    per_step = config.train.grad_accumulation * global_batch
    return (config.train.seed * 1_000_003 + step * per_step) % SEED_MODULUS


def _scst_optimizer_step(
    scorer: torch.nn.Module,
    raw_model: CaptionModel,
    tokenizer: CaptionTokenizer,
    micro: list[Batch],
    reward: CiderReward,
    seed: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast: Autocast,
    config: TrainConfig,
    parallel: Distributed,
    placeholder: Batch | None = None,
) -> dict[str, float]:
    """One self-critical step: sample and reward every micro-batch (no gradients), then the policy gradient of each,
    normalised by the step's sampled-token count over all processes (as the cross-entropy step is). The step's
    loss and reward statistics; none when every image of the step was unreadable."""
    settings = config.train.scst
    device = parallel.device()
    global_batch = config.train.batch_size * parallel.world_size
    offset = parallel.rank * config.train.batch_size  # this process's first image in each global micro-batch
    work: list[tuple[Batch, Rollout] | None] = []  # None: every image of the micro-batch unreadable here
    for index, batch in enumerate(micro):
        if not len(batch):
            work.append(None)
            continue
        if batch.features is not None:
            encoded = Encoded(batch.features.to(device))
        else:
            with autocast():
                encoded = encode_for_sampling(raw_model, batch.pixel_values.to(device))
        micro_seed = (seed + index * global_batch) % SEED_MODULUS
        with autocast():
            sampled = rollout(raw_model, tokenizer, encoded, batch.image_ids, reward, settings, micro_seed, offset)
        work.append((batch, sampled))
    done = [item for item in work if item is not None]
    local = [
        float(sum(s.tokens for _, s in done)),
        float(sum(len(s.ids) for _, s in done)),
        float(sum(s.rewards.sum() for _, s in done)),
        float(sum(s.baseline.sum() for _, s in done)),
    ]
    optimizer.zero_grad(set_to_none=True)
    entropy_total = policy_total = 0.0
    tokens, chosen, per_process = _agree(work, local[0], parallel)
    for index, item in enumerate(chosen):
        with _sync(scorer, parallel, last=index == len(chosen) - 1):
            if item is None:
                assert placeholder is not None  # another process holds data: only under DDP
                scored = partial(_scored_placeholder, scorer, placeholder, device)
                _placeholder_backward(raw_model, autocast, scaler, scored)
                continue
            batch, sampled = item
            features = None if batch.features is None else batch.features.to(device)
            pixels = None if features is not None else batch.pixel_values.to(device)
            with autocast():
                logits = scorer(pixels, features, sampled.ids, sampled.mask, sampled.rows)
            policy, entropy = policy_loss_sums(logits, sampled, settings.temperature)
            # DDP averages gradients over processes: scale by their number so the result is the global-step mean.
            loss = (policy - settings.entropy_weight * entropy) * (parallel.world_size / max(tokens, 1.0))
            auxiliary = raw_model.auxiliary_loss()
            if auxiliary is not None:
                loss = loss + auxiliary / per_process
            scaler.scale(loss).backward()
        policy_total += float(policy.detach())
        entropy_total += float(entropy.detach())
    tokens, samples, reward_sum, baseline_sum, policy_sum, entropy_sum = parallel.sum(
        [*local, policy_total, entropy_total]
    )
    if samples == 0:
        return {}
    scaler.unscale_(optimizer)
    if config.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), config.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return {
        "loss": policy_sum / max(tokens, 1.0),
        "reward": reward_sum / samples,
        "reward_baseline": baseline_sum / samples,
        "sample_length": tokens / samples,
        "entropy": entropy_sum / max(tokens, 1.0),
    }


def _scored_placeholder(scorer: torch.nn.Module, placeholder: Batch, device: torch.device) -> torch.Tensor:
    features = None if placeholder.features is None else placeholder.features.to(device)
    pixels = None if features is not None else placeholder.pixel_values.to(device)
    ids, mask = placeholder.input_ids.to(device), placeholder.attention_mask.to(device)
    return scorer(pixels, features, ids, mask, torch.zeros(1, dtype=torch.long, device=device))


def _validate(
    model: CaptionModel,
    tokenizer: CaptionTokenizer,
    loader: DataLoader,
    data: CaptionDataset,
    config: TrainConfig,
    device: torch.device,
    autocast: Autocast,
) -> dict[str, Any]:
    val_loss = evaluate_loss(model, loader, device, config.train.eval_batches, autocast)
    entry: dict[str, Any] = {"val_loss": round(val_loss, 5), "val_perplexity": round(math.exp(val_loss), 4)}
    if config.train.eval_images:
        max_new_tokens = config.data.max_length - 1
        if model.max_positions is not None:
            max_new_tokens = min(max_new_tokens, model.max_positions - 1)
        cider = validation_cider(model, tokenizer, data, config.train.eval_images, max_new_tokens, device)
        if cider is not None:
            entry["val_cider"] = round(cider, 5)
    return entry


def _improved(state: LoopState, config: TrainConfig) -> bool:
    """Update the best value of ``best_metric``; True when the latest validation set a new best."""
    value = state.val.get(config.train.best_metric)
    if value is None:
        return False
    higher_is_better = config.train.best_metric == "val_cider"
    better = state.best is None or (value > state.best if higher_is_better else value < state.best)
    if better:
        state.best, state.evals_since_best = value, 0
    else:
        state.evals_since_best += 1
    return better


def _save_training_checkpoint(
    directory: Path,
    setup: Setup,
    config: TrainConfig,
    state: LoopState,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rng_states: list[tuple[dict[str, Any], dict[str, torch.Tensor]]],
) -> None:
    # Rank 0's states under the plain names, those of other ranks (data parallel runs) under "rank{i}.".
    (rng, rng_tensors), others = rng_states[0], rng_states[1:]
    for rank, (_, tensors) in enumerate(others, start=1):
        rng_tensors = rng_tensors | {f"rank{rank}.{name}": value for name, value in tensors.items()}
    optimizer_plain, optimizer_tensors = optimizer_state(optimizer)
    trainer_state = {
        "loop": dataclasses.asdict(state),
        "rng": rng,
        "rng_other_ranks": [plain for plain, _ in others],
        "optimizer": optimizer_plain,
        "grad_scaler": scaler.state_dict(),
        "train_config": config.to_dict(),
        "captionkit_version": __version__,
    }
    was_training = setup.model.training
    setup.model.eval()
    ckpt.save_checkpoint(
        directory,
        setup.model,
        setup.tokenizer,
        setup.preprocessing,
        config.to_dict(),
        trainer_state,
        rng_tensors | optimizer_tensors,
    )
    setup.model.train(was_training)


def _restore(
    directory: Path, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rank: int = 0
) -> tuple[LoopState, Callable[[], None]]:
    """The loop state, with the optimizer and grad scaler restored; and the call that restores the RNG states,
    to be made last before the loop (building the data loader draws from torch's generator)."""
    saved, tensors = ckpt.read_training_state(directory)
    load_optimizer_state(optimizer, saved["optimizer"], tensors)
    if saved["grad_scaler"]:
        scaler.load_state_dict(saved["grad_scaler"])
    plain, rng_tensors = saved["rng"], tensors
    others = saved.get("rng_other_ranks", [])
    if 0 < rank <= len(others):
        prefix = f"rank{rank}."
        plain = others[rank - 1]
        rng_tensors = {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}
    return LoopState(**saved["loop"]), lambda: restore_rng(plain, rng_tensors)


def _publish_final_model(run_dir: Path, setup: Setup, config: TrainConfig, state: LoopState) -> None:
    final_state = {
        "step": state.step,
        "seconds": round(state.seconds, 2),
        "train_loss": state.running_loss,
        "val_loss": state.val.get("val_loss"),
        "val_cider": state.val.get("val_cider"),
        "best_metric": state.best,
        "skipped_samples": state.skipped,
        "unreadable_images": state.unreadable,
        "history": state.history,
        "captionkit_version": __version__,
    }
    setup.model.eval()
    staging = run_dir / f".final.tmp-{time.time_ns()}"
    ckpt.save_checkpoint(staging, setup.model, setup.tokenizer, setup.preprocessing, config.to_dict(), final_state)
    ckpt.publish_files(staging, run_dir)


def _result(
    run_dir: Path,
    state: LoopState,
    empty_captions: int,
    interrupted: bool,
    stopped_early: bool,
    resumed_from: Path | None,
) -> TrainResult:
    val_loss = state.val.get("val_loss")
    return TrainResult(
        output_dir=run_dir,
        steps=state.step,
        seconds=state.seconds,
        train_loss=state.running_loss,
        val_loss=val_loss,
        val_perplexity=math.exp(val_loss) if val_loss is not None else None,
        skipped_samples=state.skipped,
        history=state.history,
        val_cider=state.val.get("val_cider"),
        best_metric=state.best,
        unreadable_images=len(state.unreadable),
        empty_captions=empty_captions,
        interrupted=interrupted,
        stopped_early=stopped_early,
        resumed_from=resumed_from,
    )
