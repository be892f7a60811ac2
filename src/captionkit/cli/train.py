"""``captionkit train``: train or fine-tune a captioner from a YAML recipe, resumably."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from captionkit.cli._common import EXIT_INTERRUPTED, EXIT_PARTIAL, fail, os_error_line, quiet_libraries
from captionkit.wording import plural


def train(
    config: Annotated[
        Path,
        typer.Argument(
            metavar="RECIPE",
            help="A packaged recipe's name (coco-vit-gpt2; see --list-recipes) or a YAML file; a file on disk wins "
            "over a packaged recipe of the same name.",
        ),
    ],
    output: Annotated[
        Path, typer.Option(help="Run directory: the final model, checkpoints/, metrics.jsonl, curves.png.")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe value: --set train.lr=3e-4 (repeatable)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Resume from OUTPUT/checkpoints even with a changed recipe (by default only when they hold the "
            "same run).",
        ),
    ] = False,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Discard OUTPUT/checkpoints and start over.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress line (loss, lr, images/s, ETA) on stderr.")] = True,
    list_recipes: Annotated[
        bool,
        typer.Option(
            "--list-recipes",
            is_eager=True,
            callback=lambda value: _list_recipes(value),
            help="List the packaged recipes and their files (copy one to edit it) and exit.",
        ),
    ] = False,
) -> None:
    """Train per RECIPE in OUTPUT; `captionkit caption --model OUTPUT` loads the result.

    SIGTERM or Ctrl-C saves a checkpoint and exits 0; run the same command again to continue. Under
    `torchrun --nproc-per-node N` the same command trains with N processes (data parallel).
    """
    from captionkit.errors import CaptionkitError

    choice = _resume_choice(resume, no_resume)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("captionkit: %(message)s"))
    training_logger = logging.getLogger("captionkit.training")
    training_logger.addHandler(handler)
    training_logger.setLevel(logging.INFO)

    def log(entry: dict[str, Any]) -> None:
        # With the progress line on, only validation results are printed (every entry is in metrics.jsonl).
        if not progress or "val_loss" in entry:
            print(json.dumps(entry), file=sys.stderr, flush=True)

    try:
        # Inside the try: importing torch and transformers takes seconds, long enough for a Ctrl-C to land in.
        quiet_libraries()
        from captionkit.config import load_recipe
        from captionkit.training.loop import train as run_training

        _check_paths(config, output)
        recipe = load_recipe(config, set_ or [])
        result = run_training(recipe, output, log=log, resume=choice, progress=progress)
    except CaptionkitError as error:
        fail(str(error))
    except OSError as error:  # e.g. an output directory that cannot be written
        fail(os_error_line(error, output))
    except KeyboardInterrupt as stopped:  # typer's own answer: a silent exit 130, no word of what was lost
        _say_interrupted(stopped, output)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        training_logger.removeHandler(handler)
    summary = {
        "output": str(result.output_dir),
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "train_loss": round(result.train_loss, 5),
        "train_perplexity": result.train_perplexity,
        "val_loss": result.val_loss,
        "val_perplexity": result.val_perplexity,
        "val_cider": result.val_cider,
        "best_metric": result.best_metric,
        "skipped_samples": result.skipped_samples,
        "unreadable_images": result.unreadable_images,
        "unreadable_validation_images": result.unreadable_validation_images,
        "empty_captions": result.empty_captions,
        "interrupted": result.interrupted,
        "stopped_early": result.stopped_early,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
        "already_complete": result.already_complete,
    }
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process gets here; one summary is enough
        print(json.dumps(summary))
        if result.interrupted:  # else a Ctrl-C's answer is the summary's "interrupted": true alone
            print(f"captionkit: {_interrupted_line(result)}", file=sys.stderr)
        if result.stopped_early and not result.already_complete:  # a rerun's own line says it was stopped before
            print(f"captionkit: {_stopped_early_line(result, recipe.train)}", file=sys.stderr)
    _exit_for_unreadable(result)


def _stopped_early_line(result: Any, settings: Any) -> str:
    """Why a run ended before train.steps (else only its last log entry's "stopped_early" said so), and where its
    best weights are: the final model holds the last step's."""
    from captionkit.run_layout import CHECKPOINTS
    from captionkit.training import checkpoint as ckpt

    evaluations = plural(settings.patience, "evaluation")
    best = result.output_dir / CHECKPOINTS / ckpt.BEST
    return (
        f"stopped early at step {result.steps:,} of {settings.steps:,}: {evaluations} without a better "
        f"{settings.best_metric} (train.patience); the best one's checkpoint is {best}"
    )


def _interrupted_line(result: Any) -> str:
    """What SIGTERM or Ctrl-C left: the checkpoint the loop saved, and how to go on."""
    from captionkit.run_layout import CHECKPOINTS, step_name

    checkpoint = result.output_dir / CHECKPOINTS / step_name(result.steps)
    return f"interrupted at step {result.steps:,}: saved {checkpoint}; run the same command to continue"


def _say_interrupted(stopped: KeyboardInterrupt, output: Path) -> None:
    """One line for a Ctrl-C that training could not answer with a checkpoint (the loop's first one saves one and
    returns instead): while the run was set up, at a second Ctrl-C, or before training was reached at all."""
    from captionkit.training.stop import TrainingInterrupted

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun every process gets the Ctrl-C; one line is enough
        return
    said = f"before training began: nothing written to {output}"
    if isinstance(stopped, TrainingInterrupted):
        said = str(stopped)
    print(f"captionkit: interrupted: {said}", file=sys.stderr)


def _exit_for_unreadable(result: Any) -> None:
    """A finished run that skipped unreadable images (training or validation ones, left out of its figures) is a
    partial result with its errors recorded: said on stderr, exit 2 (as `caption`'s). An interrupted one keeps
    SIGTERM's exit 0 (its resume reports them at the end), and so does a torchrun process, which torchrun would
    report as crashed."""
    skipped = {
        "training image": (result.unreadable_images, "unreadable_images"),
        "validation image": (result.unreadable_validation_images, "unreadable_validation_images"),
    }
    if not any(number for number, _ in skipped.values()) or result.interrupted:
        return
    if int(os.environ.get("RANK", "0")) == 0:
        for noun, (number, key) in skipped.items():
            if number:
                print(
                    f"captionkit: skipped {plural(number, noun)} that could not be read ({key} in "
                    f"{result.output_dir / 'trainer_state.json'})",
                    file=sys.stderr,
                )
    if "RANK" not in os.environ:
        raise typer.Exit(EXIT_PARTIAL)


def _resume_choice(resume: bool, no_resume: bool) -> bool | None:
    """True (--resume), False (--no-resume) or None (resume the same run only); both at once are refused: one keeps
    the checkpoints and the other discards them, and the last flag must not decide silently."""
    if resume and no_resume:
        fail("--no-resume: not with --resume: --resume continues the run in OUTPUT, --no-resume discards it")
    return True if resume else False if no_resume else None


def _check_paths(config: Path, output: Path) -> None:
    """A recipe that names neither a file nor a packaged recipe (a directory included), or a run directory that
    cannot be made or written, is a one-line error before anything is read or trained (the run would fail on
    mkdir)."""
    from captionkit.config import resolve_recipe
    from captionkit.files import check_model_dir

    resolve_recipe(config)
    check_model_dir(output, "--output", noun="run directory")


def _list_recipes(value: bool) -> None:
    """``--list-recipes``: each packaged recipe's name and file, one a line, then how to train or edit one."""
    if not value:
        return
    from captionkit.config import packaged_recipes

    recipes = packaged_recipes()
    width = max(map(len, recipes))
    for name, path in recipes.items():
        print(f"{name:<{width}}  {path}")
    print(
        "captionkit: train one with `captionkit train NAME --output DIR`; to edit one, copy its file and train the "
        "copy (its _base_, if any, is still found among the packaged recipes)",
        file=sys.stderr,
    )
    raise typer.Exit(0)
