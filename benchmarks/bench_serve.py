"""Loopback load test of `captionkit serve`: latency p50/p95, error rate, and the throughput micro-batching gains.

Serves one model with uvicorn on 127.0.0.1 twice in this process, with --max-batch 8 and with --max-batch 1, and
sends the same bounded load to each (``--requests`` single-image requests, ``--concurrency`` in flight). Prints
one line per run and the throughput ratio measured side by side; absolute figures depend on the machine.

    python benchmarks/bench_serve.py                      # a random model from the `small` preset
    python benchmarks/bench_serve.py --model runs/final   # a trained checkpoint
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import uvicorn
from PIL import Image

from captionkit.api import Captioner
from captionkit.models.registry import create_model, preprocessing_for
from captionkit.serve import ServeSettings, create_app
from captionkit.serve.loadtest import LoadReport, run_load
from captionkit.text import train_bpe_tokenizer

CAPTIONS = ["a dog runs on the grass", "a cat sits on a red couch", "two birds fly over the sea"]


def random_captioner(preset: str) -> Captioner:
    """A randomly initialised model: decoding cost is what is measured, not caption quality."""
    tokenizer = train_bpe_tokenizer(CAPTIONS * 20, 400, True, 1)
    torch.manual_seed(0)
    model = create_model("vit-gpt2", preset, tokenizer)
    return Captioner(model, tokenizer, preprocessing_for(model), device="cpu")


def photo_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").resize((320, 240)).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


@contextmanager
def serving(captioner: Captioner, settings: ServeSettings) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app({"model": captioner}, settings), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def measure(captioner: Captioner, max_batch: int, args: argparse.Namespace, image: bytes) -> LoadReport:
    settings = ServeSettings(
        max_batch=max_batch, max_wait_ms=args.max_wait_ms, max_queue=4 * args.concurrency, max_images=1
    )
    params = {"num_beams": str(args.beams), "max_length": str(args.max_length)}
    with serving(captioner, settings) as url:
        run_load(url, image, params, requests=args.concurrency, concurrency=args.concurrency)  # warm-up
        return run_load(url, image, params, args.requests, args.concurrency, timeout_s=args.timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: random `--preset` model)")
    parser.add_argument("--preset", default="small", help="vit-gpt2 preset for the random model")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    captioner = Captioner.from_pretrained(args.model, device="cpu") if args.model else random_captioner(args.preset)
    image = photo_bytes()
    batched = measure(captioner, args.max_batch, args, image)
    print(f"max-batch {args.max_batch}: {batched.line()}")
    single = measure(captioner, 1, args, image)
    print(f"max-batch 1: {single.line()}")
    ratio = batched.throughput / single.throughput if single.throughput else float("nan")
    print(
        f"throughput ratio (max-batch {args.max_batch} / max-batch 1) at concurrency {args.concurrency}: {ratio:.2f}x"
    )
    return 1 if batched.errors or single.errors else 0


if __name__ == "__main__":
    sys.exit(main())
