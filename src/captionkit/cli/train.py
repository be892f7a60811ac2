"""``captionkit train``: train or fine-tune a captioner from a YAML recipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from captionkit.cli._common import fail, quiet_libraries


def train(
    config: Annotated[Path, typer.Argument(help="YAML recipe (see configs/).")],
    output: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe value: --set train.lr=3e-4 (repeatable)."),
    ] = None,
) -> None:
    """Train per CONFIG and write a checkpoint directory that `captionkit caption --model DIR` loads."""
    quiet_libraries()
    from captionkit.config import load_train_config
    from captionkit.errors import CaptionkitError
    from captionkit.training.trainer import train as run_training

    def log(entry: dict[str, Any]) -> None:
        print(json.dumps(entry), file=sys.stderr, flush=True)

    try:
        recipe = load_train_config(config, set_ or [])
        result = run_training(recipe, output, log=log)
    except CaptionkitError as error:
        fail(str(error))
    summary = {
        "output": str(result.output_dir),
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "train_loss": round(result.train_loss, 5),
        "val_loss": result.val_loss,
        "val_perplexity": result.val_perplexity,
        "skipped_samples": result.skipped_samples,
    }
    print(json.dumps(summary))
