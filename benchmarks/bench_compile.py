"""``torch.compile`` for the training step: eager against compiled seconds per step, side by side in one run.

One teacher-forced step of a random-weight ViT + GPT-2 preset (forward, caption loss, backward, AdamW) on random
pixels and token ids, timed after warm-up; the compiled run also reports its one-off compile time (the first steps).
Runs on CPU, or on CUDA when ``--device cuda`` (then timings are synchronised). Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_compile.py [--preset small] [--batch-size 16] \
        [--length 16] [--steps 20] [--threads 2] [--device cpu|cuda]

Prints JSON: seconds per step for both, ``compile_speedup`` (eager / compiled) and the compile time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from captionkit.models.vit_gpt2 import VitGpt2Model
from captionkit.training.loss import caption_loss_sum

WARMUP_STEPS = 3


def make_step(model: VitGpt2Model, compiled: bool) -> Callable[[torch.Tensor, torch.Tensor], float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled else model

    def step(pixels: torch.Tensor, input_ids: torch.Tensor) -> float:
        mask = torch.ones_like(input_ids)
        loss_sum, tokens = caption_loss_sum(forward(pixels, input_ids, mask), input_ids, mask)
        loss = loss_sum / tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def time_steps(step: Callable, pixels: torch.Tensor, ids: torch.Tensor, steps: int, device: str) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(pixels, ids)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = VitGpt2Model.from_config(args.preset, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model.to(args.device).train()
        size = model.config.image_size
        pixels = torch.randn(args.batch_size, 3, size, size, device=args.device)
        ids = torch.randint(3, model.vocab_size, (args.batch_size, args.length), device=args.device)
        ids[:, 0] = model.bos_token_id
        step = make_step(model, name == "compiled")
        warmup = time_steps(step, pixels, ids, WARMUP_STEPS, args.device)
        timed = time_steps(step, pixels, ids, args.steps, args.device)
        results[name] = {"seconds_per_step": statistics.median(timed), "warmup_seconds": sum(warmup)}
    print(
        json.dumps(
            {
                "preset": args.preset,
                "device": args.device,
                "batch_size": args.batch_size,
                "length": args.length,
                "threads": args.threads,
                **results,
                "compile_speedup": results["eager"]["seconds_per_step"] / results["compiled"]["seconds_per_step"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
