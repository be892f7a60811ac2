"""Recipes run in a tiny form: the shared data they train on and ``captionkit train RECIPE --set ...`` in process.

A tiny form is a packaged recipe (captionkit/recipes/) run with :data:`TINY`'s overrides (3 steps of 2-caption
micro-batches, one thread), the real data in ../shared/data standing in for the full datasets (tests/test_recipes.py,
test_parts.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from _data import SHARED_DATA
from _helpers import run_cli

SENTICAP = (
    f"{SHARED_DATA}/senticap/senticap_subset.json"
    f"?images={SHARED_DATA}/coco/val2017&images={SHARED_DATA}/senticap/images"
)
COCO = f"{SHARED_DATA}/coco/captions_val2017_subset.json"
FLICKR = f"{SHARED_DATA}/flickr8k"  # Flickr8k in the Flickr30k layout: token file, split lists, Images/
PHOTO = SHARED_DATA / "coco" / "val2017" / "000000000139.jpg"

TINY = [
    "train.steps=3",
    "train.batch_size=2",
    "train.warmup_steps=1",
    "train.eval_batches=1",
    "train.eval_images=2",
    "train.checkpoint_every=3",
    "train.threads=1",
    "train.tensorboard=false",
    "data.workers=0",  # worker processes cost seconds to start and decode only a dozen images here
]


def run_recipe(capsys: pytest.CaptureFixture[str], recipe: str, output: Path, *overrides: str) -> dict[str, Any]:
    """``captionkit train RECIPE --output OUTPUT --set ...`` (RECIPE: a packaged recipe's name, ``.yaml`` or not);
    the run's JSON summary."""
    args = ["train", recipe, "--output", output, "--no-progress"]
    for assignment in [*TINY, *overrides]:
        args += ["--set", assignment]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def scenes_run(scenes: Path, *extra: str) -> list[str]:
    """``--set`` values of a tiny training run (preset tiny, 300 tokens, batch 8, on the CPU, one thread) on the
    synthetic scenes ``scenes`` for training and validation; ``extra`` come last, so they win."""
    return [
        "train.device=cpu",  # the loop's arithmetic (SCST's, a gloo pair's) is checked on the CPU, GPU or not
        f"data.train={scenes}",
        f"data.val={scenes}",
        "data.cache_images=true",
        "model.preset=tiny",
        "tokenizer.vocab_size=300",
        "train.batch_size=8",
        "train.warmup_steps=1",
        "train.eval_every=4",
        "train.eval_images=4",
        "train.log_every=1",
        "train.checkpoint_every=0",
        "train.lr=3e-3",
        "train.threads=1",
        "train.tensorboard=false",
        *extra,
    ]
