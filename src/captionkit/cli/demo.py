"""``captionkit demo``: the offline end-to-end demo on built-in synthetic scenes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from captionkit.cli._common import EXIT_INTERRUPTED, fail, os_error_line, quiet_libraries
from captionkit.config import MAX_SEED
from captionkit.demo_data import DemoData
from captionkit.wording import plural


def demo(
    output: Annotated[Path, typer.Option(help="Directory for data, model, metrics.json and report.html.")] = Path(
        "demo-output"
    ),
    steps: Annotated[int | None, typer.Option(help="Training steps (default: the recipe's).")] = None,
    train_scenes: Annotated[int, typer.Option(help="Scenes drawn for training.")] = DemoData.num_train,
    test_scenes: Annotated[int, typer.Option(help="Unseen scenes captioned and scored.")] = DemoData.num_test,
    seed: Annotated[int, typer.Option(help="Seed of the scenes and of training.")] = DemoData.seed,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a demo recipe value, e.g. --set train.lr=1e-3."),
    ] = None,
) -> None:
    """Train a small captioner on synthetic scenes, caption unseen ones, and report how well it did."""
    quiet_libraries()
    from captionkit.demo import RESULTS, DemoInterrupted, run_demo
    from captionkit.errors import CaptionkitError
    from captionkit.files import check_model_dir

    if steps is not None and steps < 1:
        fail(f"--steps: must be at least 1, got {steps}")
    for flag, scenes in (("--train-scenes", train_scenes), ("--test-scenes", test_scenes)):
        if scenes < 1:
            fail(f"{flag}: must be at least 1, got {scenes}")
    if not 0 <= seed <= MAX_SEED:  # numpy's seeds, which training sets from it
        fail(f"--seed: must be in [0, {MAX_SEED}], got {seed}")
    try:
        check_model_dir(output, "--output")
    except CaptionkitError as error:
        fail(str(error))
    data = DemoData(num_train=train_scenes, num_test=test_scenes, seed=seed)

    def log(entry: dict[str, Any]) -> None:
        # Beside the progress line, only validation results (every entry is in DIR/model/metrics.jsonl).
        if "val_loss" in entry:
            print(json.dumps(entry), file=sys.stderr, flush=True)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        metrics = run_demo(output, steps=steps, data=data, overrides=set_ or [], log=log, progress=True, say=say)
    except CaptionkitError as error:
        fail(str(error))
    except OSError as error:  # a disk that fills or a directory removed midway: what the check above cannot foresee
        fail(f"--output: {os_error_line(error, output)}")
    except KeyboardInterrupt as stopped:  # typer's own answer is a silent exit 130; training's, a checkpoint
        when = f"{stopped}: " if isinstance(stopped, DemoInterrupted) else ""
        print(f"captionkit: interrupted: {when}no {' or '.join(RESULTS)} written to {output}", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    print(json.dumps(metrics, indent=2))
    unseen, steps_done = plural(metrics["test_images"], "unseen scene"), plural(metrics["train_steps"], "step")
    print(
        f"exact match {metrics['exact_match']:.1%} on {unseen} after {steps_done} ({metrics['train_seconds']:.0f} s); "
        f"report: {output / 'report.html'}",
        file=sys.stderr,
    )
