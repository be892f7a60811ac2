"""Training speed per precision: images/s and where a step's time goes (data, forward, backward, optimizer).

Runs of the same recipe (ViT + GPT-2 from scratch on synthetic scenes) in fp32, bf16 and bf16 with
``train.compile``, one after another in one process; prints one JSON line per run with images/s over the steps
after the warm-up and the last logged step's time split, then the bf16 / fp32 ratio. Usage::

    .venv/bin/python benchmarks/bench_train_speed.py [--preset tiny] [--steps 30] [--batch-size 16] [--workers 0]
    python3 benchmarks/bench_train_speed.py --preset base --image-size 224 --batch-size 64 --steps 60 --workers 8

On a CPU, ``--runs fp32 bf16`` leaves out the compiled run (inductor's C++ build alone takes minutes there).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from captionkit.config import load_train_config
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.training.loop import train

RUNS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16-compile": ("bf16", True)}


def run(data: Path, out: Path, args: argparse.Namespace, name: str) -> dict[str, Any]:
    precision, compiled = RUNS[name]
    config = load_train_config(
        None,
        [
            f"data.train={data}",
            "data.val_fraction=0",
            "data.cache_images=true",
            f"data.workers={args.workers}",
            f"model.preset={args.preset}",
            f"model.overrides={{image_size: {args.image_size}}}",
            "tokenizer.vocab_size=1000",
            f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            "train.warmup_steps=2",
            "train.eval_images=0",
            f"train.log_every={args.warmup}",
            "train.checkpoint_every=0",
            "train.tensorboard=false",
            f"train.precision={precision}",
            f"train.compile={str(compiled).lower()}",
        ],
    )
    result = train(config, out)
    first, last = result.history[0], result.history[-1]
    images = (last["step"] - first["step"]) * args.batch_size
    return {
        "run": name,
        "images_per_second": round(images / max(last["seconds"] - first["seconds"], 1e-9), 1),
        "step_seconds": last.get("step_seconds"),
        "loss": last["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed span (also the log interval)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args()
    if args.steps < 2 * args.warmup:
        # Logged every --warmup steps: the timed span runs from the first log to the last, so two logs are needed.
        parser.error(f"--steps {args.steps}: at least twice --warmup ({args.warmup}), or nothing is timed")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_synthetic_dataset(root / "scenes", args.images, 8, 4, seed=0, image_size=args.image_size)
        rows = [run(data, root / name, args, name) for name in args.runs]
    for row in rows:
        print(json.dumps(row))
    speed = {row["run"]: row["images_per_second"] for row in rows}
    if "fp32" in speed and "bf16" in speed:
        print(json.dumps({"bf16_over_fp32": round(speed["bf16"] / speed["fp32"], 2)}))


if __name__ == "__main__":
    main()
