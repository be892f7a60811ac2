"""How a run ends: what the loop tracked beside the checkpointed state, the step checkpoints, the last one, the
curves and the final model, and the :class:`TrainResult` handed back to the caller."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from captionkit.run_layout import step_name
from captionkit.training import checkpoint as ckpt
from captionkit.training.curves import draw_curves
from captionkit.training.resume import last_logged, publish_final_model, saved_train_config
from captionkit.training.run import Run

CURVES = "curves.png"


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
    # Resumed at or past its end (train.steps, or early stopping): nothing was trained, the final model rewritten.
    already_complete: bool = False
    train_perplexity: float | None = None
    unreadable_validation_images: int = 0  # left out of the validation figures


@dataclass
class Progress:
    """What the loop tracks beside the checkpointed state: the clock, the loss on the device, how it ended."""

    started: float
    seconds_before: float
    loss: torch.Tensor  # the smoothed loss, read (a host sync) only when logged or saved
    window_nll: torch.Tensor  # the token NLL since the last log step, read likewise (LoopState.window_nll)
    start_step: int = 0
    samples_seen: int = 0
    unreadable_run: int = 0  # samples since the last step with a readable image
    last_saved: int = -1
    stop_requested: bool = False
    stopped_early: bool = False
    out_of_time: bool = False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def save_step(run: Run, now: Progress) -> None:
    """A resumable checkpoint of the current step, and the old ones pruned."""
    run.state.running_loss = float(now.loss)
    run.state.window_nll = float(now.window_nll)
    run.save(step_name(run.state.step))
    now.last_saved = run.state.step
    if run.parallel.is_main:
        ckpt.prune_checkpoints(run.checkpoints, run.config.train.keep_checkpoints)


def finish(run: Run, now: Progress) -> TrainResult:
    """The last checkpoint, every process's unreadable images, the log closed, the curves and the final model."""
    state, parallel = run.state, run.parallel
    interrupted = now.stop_requested and state.step < run.config.train.steps
    interrupted = interrupted and not (now.stopped_early or now.out_of_time)
    if (interrupted or run.config.train.checkpoint_every) and now.last_saved != state.step:
        save_step(run, now)
    # Each process skipped the unreadable images it drew: the run's result and final model list them all.
    state.unreadable = {image: why for part in parallel.gather(state.unreadable) for image, why in part.items()}
    if parallel.is_main:
        assert run.run_log is not None
        run.run_log.close()
        draw_curves(state.history, run.run_dir / CURVES)
        if not interrupted:
            # Resumed at or past its end, nothing trained: the model is the checkpoint's, and so are the settings it
            # was trained with (not a lowered train.steps, say, that this command asked for and did not apply).
            nothing_trained = run.resumed_from is not None and state.step == now.start_step
            kept = saved_train_config(run.resumed_from) if nothing_trained and run.resumed_from else None
            publish_final_model(run.run_dir, run.setup, run.config, state, run.empty_captions, kept)
    parallel.barrier()
    val_loss = state.val.get("val_loss")
    return TrainResult(
        output_dir=run.run_dir,
        steps=state.step,
        seconds=state.seconds,
        train_loss=state.running_loss,
        val_loss=val_loss,
        val_perplexity=_val_perplexity(state.val),
        skipped_samples=state.skipped,
        history=state.history,
        val_cider=state.val.get("val_cider"),
        best_metric=state.best,
        unreadable_images=len(state.unreadable),
        unreadable_validation_images=len(state.unreadable_val),
        empty_captions=run.empty_captions,
        interrupted=interrupted,
        stopped_early=now.stopped_early,
        resumed_from=run.resumed_from,
        already_complete=run.resumed_from is not None and state.step == now.start_step and not interrupted,
        train_perplexity=last_logged(state.history, "perplexity"),
    )


def _val_perplexity(val: dict[str, float | None]) -> float | None:
    """The last logged val_perplexity (rounded as the log rounds it: exp of the rounded val_loss would differ from
    it); from val_loss, rounded alike, for a checkpoint that saved none."""
    if val.get("val_perplexity") is not None:
        return val["val_perplexity"]
    val_loss = val.get("val_loss")
    return round(math.exp(val_loss), 4) if val_loss is not None else None
