"""The training loop: one explicit loop, readable in one sitting.

Each optimizer step: pick the stage (which parameter groups train), set the learning rate (schedule.py), draw
``grad_accumulation`` micro-batches and hand them to the step object (steps.py: forward under autocast, the loss
over the step's token count, backward, unscale, clip, AdamW). Every ``log_every`` steps: a line in
``metrics.jsonl`` with the loss and where the step's time went. Every ``eval_every`` steps: validation loss,
perplexity and CIDEr-D, the best checkpoint, early stopping. Every ``checkpoint_every`` steps: a resumable
checkpoint (resume.py). SIGTERM or Ctrl-C saves one and returns. At the end the final model is written into the run
directory, where ``Captioner.from_pretrained`` and plain ``transformers`` load it, with ``metrics.jsonl`` and
``curves.png`` beside it (finish.py). The run is put together in run.py, its model and data in setup.py.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from captionkit.config import TrainConfig
from captionkit.errors import InputError
from captionkit.training import checkpoint as ckpt
from captionkit.training.finish import Progress, TrainResult, finish, save_step
from captionkit.training.resume import LoopState, out_of_time_before, stopped_early_before
from captionkit.training.run import Run, deterministic_algorithms, prepare_run
from captionkit.training.run_log import ProgressLine
from captionkit.training.setup import Setup
from captionkit.training.stop import StopSignal, TrainingInterrupted
from captionkit.training.summary import stage_line
from captionkit.training.timing import PhaseTimer

LogFn = Callable[[dict[str, Any]], None]
logger = logging.getLogger("captionkit.training")
MAX_LOG_PERPLEXITY = 700.0  # exp of more overflows a float


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
    with deterministic_algorithms(config.train.deterministic):
        try:
            run = prepare_run(config, Path(output_dir), setup, resume)
        except KeyboardInterrupt:  # before the StopSignal: Ctrl-C ends the process, which must say what it stopped
            raise TrainingInterrupted(
                f"while setting up the run in {output_dir} (reading the data, building the model and tokenizer), "
                "before its first step: no checkpoint or model written"
            ) from None
        try:
            shown = progress and run.parallel.is_main
            with StopSignal() as stop, ProgressLine(config.train.steps, run.state.step, shown) as line:
                ended = _loop(run, stop, line, log or (lambda _: None))
        except KeyboardInterrupt:  # StopSignal's second Ctrl-C: at once, without the checkpoint the first asked for
            raise TrainingInterrupted(
                f"a second Ctrl-C stopped the run at step {run.state.step} without saving it: the same command "
                f"resumes from the newest checkpoint in {run.checkpoints}, if there is one"
            ) from None
        finally:
            run.close()
        try:
            result = finish(run, ended)
        except KeyboardInterrupt:  # outside the StopSignal too: the checkpoints and the model are written atomically
            raise TrainingInterrupted(
                f"while saving the run at step {run.state.step} (its last checkpoint or final model): the same "
                f"command resumes from the newest complete checkpoint in {run.checkpoints}, if there is one"
            ) from None
        run.step.module = None  # the DDP module, and its reducer, before the process group (Distributed.close)
        run.parallel.close()
        return result


def _loop(run: Run, stop: StopSignal, line: ProgressLine, emit: LogFn) -> Progress:
    config, state, parallel, device = run.config, run.state, run.parallel, run.step.device
    loss = torch.tensor(state.running_loss, dtype=torch.float64, device=device)
    window = torch.tensor(state.window_nll, dtype=torch.float64, device=device)
    last_saved = state.step if run.resumed_from else -1
    now = Progress(time.perf_counter(), state.seconds, loss, window, start_step=state.step, last_saved=last_saved)
    now.stopped_early = run.resumed_from is not None and stopped_early_before(config, state)
    # A run that train.max_seconds ended stays ended when run again (its seconds are the whole run's): else each
    # rerun trained one more step past the limit. A larger max_seconds (a change a resumed run may make) goes on.
    now.out_of_time = run.resumed_from is not None and out_of_time_before(config, state)
    while state.step < config.train.steps and not now.stopped_early and not now.out_of_time:
        # Every process must agree, or one saves (a collective) while the others wait elsewhere.
        now.stop_requested = parallel.any(stop.received is not None)
        if now.stop_requested:
            break
        if run.stages.apply(state.step) or run.step.module is None:
            run.step.rewrap()
            _report_stage(run)
        timer = PhaseTimer(device, enabled=_timed(state.step + 1, config))
        micro = run.draw_micro_batches()
        timer.lap("data")
        lr = run.set_lr()
        output = run.step(micro, state.step, timer)
        if output is None:  # every image of the step was unreadable
            _check_some_readable(run, now)
            continue
        now.unreadable_run = 0
        state.step += 1
        now.samples_seen += sum(len(b) for b in micro) * parallel.world_size
        now.loss = output.loss if state.step == 1 else 0.9 * now.loss + 0.1 * output.loss
        if output.nll_sum is not None:  # on the device: read at the next log step
            now.window_nll += output.nll_sum
            state.window_tokens += output.tokens
        for key, value in output.stats.items():  # SCST reward statistics, smoothed like the loss
            state.scst[key] = 0.9 * state.scst.get(key, value) + 0.1 * value
        state.seconds = now.seconds_before + now.elapsed
        # Every process must stop at the same step: rank 0's clock decides.
        limit = config.train.max_seconds
        now.out_of_time = parallel.broadcast_flag(bool(limit) and state.seconds >= limit)
        is_last = state.step == config.train.steps or now.out_of_time
        speed = now.samples_seen / max(now.elapsed, 1e-9)
        evaluate = run.validation is not None and (state.step % config.train.eval_every == 0 or is_last)
        logged = state.step % config.train.log_every == 0 or is_last or evaluate
        if logged or (line.enabled and device.type == "cpu"):  # on a GPU, reading the loss waits for it
            state.running_loss = float(now.loss)
            line.update(state.step, state.running_loss, lr, speed)
        if logged:
            _log(run, now, lr, speed, timer.split(), evaluate, emit)
        now.stopped_early = parallel.broadcast_flag(now.stopped_early)
        if config.train.checkpoint_every and state.step % config.train.checkpoint_every == 0:
            save_step(run, now)
        if now.stopped_early or now.out_of_time:
            break
    state.running_loss = float(now.loss)
    return now


def _report_stage(run: Run) -> None:
    """A line at each switch of staged unfreezing (and at a resume into a later stage): the first stage is in the
    run's summary."""
    index = run.stages.current
    if run.parallel.is_main and index:
        logger.info("%s", stage_line(run.stages, index, run.state.step))


def _timed(step: int, config: TrainConfig) -> bool:
    """Whether step number ``step`` (counted from 1) is logged, and so has its time split measured."""
    return step % config.train.log_every == 0 or step == config.train.steps


def _check_some_readable(run: Run, now: Progress) -> None:
    """A whole pass over the data without a readable image stops the run."""
    now.unreadable_run += run.stream.global_batch * run.config.train.grad_accumulation
    if now.unreadable_run >= run.train_size:
        unreadable = len(run.state.unreadable)
        raise InputError(run.config.data.train, f"no readable training image ({unreadable} unreadable)")


def _train_perplexity(state: LoopState, now: Progress) -> dict[str, float]:
    """exp of the mean token NLL (unsmoothed, whatever train.label_smoothing) over the steps since the last log
    step; the window starts again. Nothing for SCST, whose loss is no likelihood."""
    if not state.window_tokens:
        return {}
    mean = float(now.window_nll) / state.window_tokens  # the host sync of a log step
    now.window_nll.zero_()
    state.window_nll = state.window_tokens = 0.0
    return {"perplexity": round(math.exp(min(mean, MAX_LOG_PERPLEXITY)), 4)}


def _log(
    run: Run, now: Progress, lr: float, speed: float, split: dict[str, float], evaluate: bool, emit: LogFn
) -> None:
    """The step's log entry (with validation, the best checkpoint and early stopping when ``evaluate``)."""
    state = run.state
    entry: dict[str, Any] = {
        "step": state.step,
        "loss": round(state.running_loss, 5),
        **_train_perplexity(state, now),
        "lr": lr,
        "seconds": round(state.seconds, 2),
        "images_per_second": round(speed, 2),
    }
    if split:
        entry["step_seconds"] = split
    entry |= {key: round(value, 5) for key, value in state.scst.items()}
    if state.skipped:
        entry["skipped_samples"] = state.skipped
    if evaluate:
        assert run.validation is not None
        step = run.step
        entry |= run.validation(run.setup.model, run.setup.tokenizer, run.config, step.device, step.autocast)
        for image, reason in run.validation.unreadable.items():  # said once, as draw_micro_batches says its own
            if image not in state.unreadable_val:
                state.unreadable_val[image] = reason
                logger.warning("skipping unreadable validation image %s: %s", image, reason)
        state.val = {k: entry[k] for k in ("val_loss", "val_perplexity", "val_cider") if k in entry}
        if state.improved(run.config.train.best_metric):
            run.save(ckpt.BEST, every_rank=False)
        elif run.config.train.patience and state.evals_since_best >= run.config.train.patience:
            now.stopped_early = True
            entry["stopped_early"] = True
    if run.parallel.is_main:
        state.history.append(entry)
        assert run.run_log is not None
        run.run_log.write(entry)
        emit(entry)
