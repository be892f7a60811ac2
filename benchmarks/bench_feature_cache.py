"""The frozen-encoder feature cache: training step time with and without it, measured side by side in one run.

Two runs of the same recipe (ViT + GPT-2, encoder frozen for the whole run by ``train.stages``) on synthetic
scenes: one encodes every image once up front and trains from the cached features, the other runs the frozen encoder
in every step. Prints each run's seconds per step (after the first steps, which warm up), the cache's one-off
encoding time, and the ratio. Usage::

    .venv/bin/python benchmarks/bench_feature_cache.py [--preset small] [--steps 40] [--images 256] [--threads 2]

The ratio is the figure to compare; absolute times depend on the machine and how busy it is.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from captionkit.config import load_train_config
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.training.loop import train

WARMUP_STEPS = 5


def run(data: Path, out: Path, args: argparse.Namespace, cache: bool) -> dict[str, Any]:
    config = load_train_config(
        None,
        [
            f"data.train={data}",
            "data.val_fraction=0.05",
            "data.cache_images=true",  # both runs keep decoded pixels: the difference is the encoder alone
            f"model.preset={args.preset}",
            "model.overrides={image_size: 64, decoder_dropout: 0.0}",
            "tokenizer.vocab_size=1000",
            f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            "train.eval_every=100000",
            "train.eval_images=0",
            "train.log_every=1",
            f"train.threads={args.threads}",
            "train.tensorboard=false",
            "train.stages=[{train: [embeddings, cross_attention, decoder]}]",
            f"train.cache_features={str(cache).lower()}",
        ],
    )
    seconds: list[float] = []
    started = time.perf_counter()
    result = train(config, out, log=lambda entry: seconds.append(entry["seconds"]))
    total = time.perf_counter() - started
    timed = seconds[WARMUP_STEPS:]
    per_step = (timed[-1] - timed[0]) / max(1, len(timed) - 1)
    return {"per_step": per_step, "total": total, "train_seconds": result.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("captionkit.training").setLevel(logging.WARNING)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_synthetic_dataset(root / "scenes", args.images, 16, 16, seed=0, image_size=64)
        plain = run(data, root / "plain", args, cache=False)
        cached = run(data, root / "cached", args, cache=True)
    print(f"preset {args.preset}, batch {args.batch_size}, {args.steps} steps, {args.images} images, 64 px")
    print(f"{'':24}{'encoder each step':>20}{'feature cache':>16}")
    print(f"{'seconds per step':24}{plain['per_step']:>20.4f}{cached['per_step']:>16.4f}")
    print(f"{'whole run (s)':24}{plain['total']:>20.2f}{cached['total']:>16.2f}")
    print(f"step-time ratio (encoder / cache): {plain['per_step'] / cached['per_step']:.2f}x")


if __name__ == "__main__":
    main()
