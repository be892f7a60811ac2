"""Images per second of batch captioning with image decoding in-process (0 workers) vs in 2 DataLoader workers.

Captions real JPEGs (Flickr8k and COCO val2017 from ../shared/data, up to 640 px) with a randomly initialised
ViT + GPT-2 of the given preset: ``tiny`` (32 px input, decoding dominates) or ``base`` (224 px, ViT-B + GPT-2
sized, model compute dominates). Both settings run in the same process, alternating, each timed as its best of
``--repeat`` runs after a warm-up; the line to compare is the ratio. Usage::

    .venv/bin/python benchmarks/bench_caption_workers.py [--preset tiny|base] [--images 300] [--workers 2]
        [--batch-size 16] [--beams 1] [--max-length 20] [--repeat 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _data import SHARED_DATA
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.images import Preprocessing
from captionkit.jobs.batch import caption_files
from captionkit.jobs.outputs import RecordWriter
from captionkit.models.registry import create_model
from captionkit.text import train_bpe_tokenizer

DATA = SHARED_DATA
FOLDERS = (DATA / "flickr8k" / "Images", DATA / "coco" / "val2017")


def build_captioner(preset: str, device: str | None) -> Captioner:
    tokenizer = train_bpe_tokenizer(["a dog runs on the grass", "a cat sits on a red couch"] * 10, 300, True, 1)
    torch.manual_seed(0)
    model = create_model("vit-gpt2", preset, tokenizer)
    size = model.config.image_size
    return Captioner(model, tokenizer, Preprocessing.for_size(size, size), device)


def images_per_second(captioner: Captioner, paths: list[Path], config: DecodingConfig, args, workers: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        writer = RecordWriter(Path(scratch) / "out.jsonl", "jsonl")
        start = time.perf_counter()
        summary = caption_files(captioner, paths, config, writer, args.batch_size, workers=workers)
        seconds = time.perf_counter() - start
        writer.close()
    assert summary.captioned == len(paths), f"{summary.errors} images failed"
    return len(paths) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "base"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    paths = [path for folder in FOLDERS for path in sorted(folder.glob("*.jpg"))][: args.images]
    assert paths, f"no JPEGs in {FOLDERS}"
    captioner = build_captioner(args.preset, args.device)
    config = DecodingConfig(max_new_tokens=args.max_length, num_beams=args.beams)
    parameters = sum(p.numel() for p in captioner.model.parameters()) / 1e6
    print(
        f"{len(paths)} JPEGs, preset {args.preset} ({parameters:.1f}M parameters), device {captioner.device}, "
        f"batch {args.batch_size}, beams {args.beams}, max length {args.max_length}, torch threads "
        f"{torch.get_num_threads()}"
    )
    images_per_second(captioner, paths[: args.batch_size * 2], config, args, 0)  # warm-up: allocator, kernels
    best = {0: 0.0, args.workers: 0.0}
    for _ in range(args.repeat):
        for workers in best:
            best[workers] = max(best[workers], images_per_second(captioner, paths, config, args, workers))
    for workers, rate in best.items():
        print(f"workers={workers}: {rate:8.1f} images/s")
    print(f"ratio workers={args.workers} / workers=0: {best[args.workers] / best[0]:.2f}x")


if __name__ == "__main__":
    main()
