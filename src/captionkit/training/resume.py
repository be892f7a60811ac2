"""A run's checkpoints: which one to resume from, what a training checkpoint holds beyond the model, and the final
model published into the run directory.

A training checkpoint holds the loop's position (:class:`LoopState`), the optimizer's moments, the gradient scaler,
every process's RNG states and the config. Restored, a run continues exactly where the saved one was.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from captionkit.config import ModelSection, TokenizerSection, TrainConfig, from_dict
from captionkit.errors import ConfigError, InputError
from captionkit.jsontext import parse_json
from captionkit.run_layout import latest_checkpoint
from captionkit.trained_on import TRAIN_CONFIG
from captionkit.training import checkpoint as ckpt
from captionkit.training.setup import Setup
from captionkit.training.state import load_optimizer_state, optimizer_state, restore_rng
from captionkit.version import __version__

logger = logging.getLogger("captionkit.training")

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
    "train.device",
    "train.compile",
    "data.workers",
)
RngStates = list[tuple[dict[str, Any], dict[str, torch.Tensor]]]


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint's trainer_state.json."""

    step: int = 0
    cursor: int = 0  # samples of the endless data stream consumed (sampling.py, shard_stream.py)
    data_slots: int = 0  # processes x workers reading streamed shards (0: map-style data); the cursor's layout
    running_loss: float = 0.0
    # The token NLL and token count since the last logged step: the logged train perplexity's window.
    window_nll: float = 0.0
    window_tokens: float = 0.0
    seconds: float = 0.0
    skipped: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # image path -> reason
    unreadable_val: dict[str, str] = field(default_factory=dict)  # validation's, likewise (left out of its figures)
    best: float | None = None
    evals_since_best: int = 0
    val: dict[str, float | None] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # SCST: running means of reward, reward_baseline, sample_length and entropy (like running_loss).
    scst: dict[str, float] = field(default_factory=dict)

    def improved(self, best_metric: str) -> bool:
        """Update the best value of ``best_metric`` from the latest validation; True when it set a new best."""
        value = self.val.get(best_metric)
        if value is None:
            return False
        higher_is_better = best_metric == "val_cider"
        better = self.best is None or (value > self.best if higher_is_better else value < self.best)
        if better:
            self.best, self.evals_since_best = value, 0
        else:
            self.evals_since_best += 1
        return better


def stopped_early_before(config: TrainConfig, state: LoopState) -> bool:
    """Whether the checkpoint resumed from (its ``state``) is where early stopping ended the run. Running the same
    command again must not train past that point; a larger ``train.patience`` (a change a resumed run may make)
    continues it."""
    patience = config.train.patience
    return patience > 0 and state.evals_since_best >= patience


def out_of_time_before(config: TrainConfig, state: LoopState) -> bool:
    """Whether the checkpoint resumed from (its ``state``) is where ``train.max_seconds`` ended the run."""
    limit = config.train.max_seconds
    return bool(limit) and state.seconds >= limit


def saved_steps(checkpoint: Path) -> int | None:
    """The ``train.steps`` of the run that wrote ``checkpoint`` (its trainer_state.json alone is read)."""
    train = (saved_train_config(checkpoint) or {}).get("train")
    steps = train.get("steps") if isinstance(train, dict) else None
    return steps if isinstance(steps, int) else None


def find_resume_checkpoint(config: TrainConfig, checkpoints: Path, resume: bool | None) -> Path | None:
    """The checkpoint to resume from: the newest COMPLETE one, if ``resume`` is None (auto) or True. With False
    none: the run starts over, and deletes the old checkpoints only once it is ready to train (a run refused on the
    way must not cost them)."""
    if resume is False:
        return None
    latest = latest_checkpoint(checkpoints)
    if latest is None:
        if resume:
            raise InputError(checkpoints, "no complete checkpoint to resume from")
        _refuse_another_finished_model(config, checkpoints.parent)
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
        # The model, its tokenizer and preprocessing are the checkpoint's (setup.from_checkpoint): a change to how
        # they are built cannot take effect, and must not look as if it had.
        ignored = [key for key in changed if key.startswith(("model.", "tokenizer."))]
        if ignored:
            logger.warning(
                "%s: not applied: a resumed run keeps the checkpoint's model and tokenizer (--no-resume starts over "
                "with the new values)",
                ", ".join(ignored),
            )
    return latest


def keep_checkpoint_model(config: TrainConfig, checkpoint: Path) -> TrainConfig:
    """``config`` with the ``model`` and ``tokenizer`` sections of the run that wrote ``checkpoint``. A resumed run
    trains the checkpoint's model and tokenizer (setup.from_checkpoint) whatever the recipe now says of them, so the
    configs it saves (checkpoints, the final model's train_config.json) must name those, not the changed values that
    :func:`find_resume_checkpoint` said were not applied. A saved section that no longer reads leaves ``config`` as
    it is."""
    saved = saved_train_config(checkpoint)
    if saved is None:
        return config
    try:
        model = from_dict(ModelSection, saved["model"], "model")
        tokenizer = from_dict(TokenizerSection, saved["tokenizer"], "tokenizer")
    except (InputError, KeyError):  # InputError: ConfigError too
        return config
    return dataclasses.replace(config, model=model, tokenizer=tokenizer)


def saved_train_config(checkpoint: Path) -> dict[str, Any] | None:
    """The config of the run that wrote ``checkpoint`` (its trainer_state.json), None where it cannot be read."""
    try:
        saved = parse_json((checkpoint / ckpt.TRAINER_STATE).read_text(encoding="utf-8"), checkpoint, non_finite=True)
        config = saved["train_config"]
    except (OSError, InputError, KeyError, TypeError):
        return None
    return config if isinstance(config, dict) else None


def _refuse_another_finished_model(config: TrainConfig, run_dir: Path) -> None:
    """A finished model in ``run_dir`` with no checkpoint beside it (its checkpoints/ pruned, or a run's
    checkpoints/best given as the output) that another recipe trained: the new run would replace its files one by
    one, unasked. Refused as a checkpoint of another recipe is; the same recipe trains it again, as before."""
    if not (run_dir / ckpt.COMPLETE).is_file():
        return
    try:
        saved = parse_json((run_dir / TRAIN_CONFIG).read_text(encoding="utf-8"), run_dir / TRAIN_CONFIG)
    except (OSError, InputError):
        return
    changed = _changed_keys(saved, config.to_dict()) if isinstance(saved, dict) else []
    if changed:
        raise ConfigError(
            changed[0],
            f"differs from the finished model in {run_dir}, which has no checkpoint to resume from: pass "
            "--no-resume to replace it, or choose another output directory",
        )


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


def save_training_checkpoint(
    directory: Path,
    setup: Setup,
    config: TrainConfig,
    state: LoopState,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rng_states: RngStates,
) -> None:
    """A resumable checkpoint; ``rng_states`` holds every process's, in rank order."""
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
        "optimizer_groups": _group_names(setup.model, optimizer),
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


def restore_training_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rank: int = 0,
) -> tuple[LoopState, Callable[[], None]]:
    """The loop state, with the optimizer (its parameter groups as the checkpoint's) and grad scaler restored; and
    the call that restores the RNG states, to be made last before the loop (building the data loader draws from
    torch's generator)."""
    saved, tensors = ckpt.read_training_state(directory)
    if "optimizer_groups" in saved:
        _regroup(directory, model, optimizer, saved["optimizer_groups"])
    else:  # written before checkpoints named their groups' parameters (captionkit 0.x)
        _check_optimizer_groups(directory, optimizer, saved)
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


def _group_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The names of each AdamW group's parameters (decayed, not decayed), in the group's order."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [[names[id(parameter)] for parameter in group["params"]] for group in optimizer.param_groups]


def _regroup(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: Any) -> None:
    """Give ``optimizer`` (not stepped yet) the checkpoint's parameter groups, by name: a run keeps the weight decay
    split it started with, also when this captionkit would split the parameters otherwise (it keeps more of them
    from decay than it did), so that the resumed run continues the interrupted one exactly."""
    current = _group_names(model, optimizer)
    if saved == current:
        return
    if not isinstance(saved, list) or not all(
        isinstance(g, list) and all(isinstance(n, str) for n in g) for g in saved
    ):
        raise InputError(directory, f"optimizer_groups in {ckpt.TRAINER_STATE} is not lists of parameter names")
    if len(saved) != len(current) or sorted(chain(*saved)) != sorted(chain(*current)):
        raise InputError(
            directory,
            "its optimizer holds other parameters than this run's model (a checkpoint of another model?): pass "
            "--no-resume to start over",
        )
    parameters = dict(model.named_parameters())
    for group, names in zip(optimizer.param_groups, saved, strict=True):
        group["params"] = [parameters[name] for name in names]


def _check_optimizer_groups(directory: Path, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The checkpoint's AdamW groups (decayed, not decayed) hold as many parameters as this run's: a version that
    decays other parameters (captionkit keeps more position tables from decay than it did) cannot resume it, and
    torch would say so in a traceback."""
    saved_sizes = [len(group["params"]) for group in saved["optimizer"]["param_groups"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        version = saved.get("captionkit_version", "unknown")
        raise InputError(
            directory,
            f"its optimizer groups the parameters as {' + '.join(map(str, saved_sizes))} for weight decay, this "
            f"captionkit as {' + '.join(map(str, sizes))} (the checkpoint's captionkit: {version}): pass --no-resume "
            "to start over, or resume with the captionkit that wrote it",
        )


def publish_final_model(
    run_dir: Path,
    setup: Setup,
    config: TrainConfig,
    state: LoopState,
    empty_captions: int,
    train_config: dict[str, Any] | None = None,
) -> None:
    """The trained model written into the run directory (files replaced one by one, COMPLETE last), with the
    run's summary as its trainer_state.json and ``train_config`` (``config``'s, unless given) as its
    train_config.json."""
    final_state = {
        "step": state.step,
        "seconds": round(state.seconds, 2),
        "train_loss": state.running_loss,
        "train_perplexity": last_logged(state.history, "perplexity"),
        "val_loss": state.val.get("val_loss"),
        "val_cider": state.val.get("val_cider"),
        "best_metric": state.best,
        "skipped_samples": state.skipped,
        "unreadable_images": state.unreadable,
        "unreadable_validation_images": state.unreadable_val,
        "empty_captions": empty_captions,
        "history": state.history,
        "captionkit_version": __version__,
    }
    setup.model.eval()
    staging = run_dir / f".final.tmp-{time.time_ns()}"
    saved_config = config.to_dict() if train_config is None else train_config
    ckpt.save_checkpoint(staging, setup.model, setup.tokenizer, setup.preprocessing, saved_config, final_state)
    ckpt.publish_files(staging, run_dir)


def last_logged(history: list[dict[str, Any]], key: str) -> float | None:
    return next((entry[key] for entry in reversed(history) if key in entry), None)


def broadcast_path(path: Path | None) -> Path | None:
    """Rank 0's ``path`` on every process."""
    import torch.distributed as dist

    holder: list[Any] = [str(path) if path is not None else None]
    dist.broadcast_object_list(holder, 0)
    return Path(holder[0]) if holder[0] is not None else None
