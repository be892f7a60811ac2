"""Images per second of batch captioning from loose JPEG files vs WebDataset tar shards vs Parquet.

The same real JPEGs (Flickr8k and COCO val2017 from ../shared/data) are packed into tar shards and one Parquet file
in a scratch directory, then captioned by a randomly initialised tiny ViT + GPT-2 (32 px input: reading and
decoding dominate). Each layout is timed as its best of ``--repeat`` runs, alternating, after a warm-up; the lines
to compare are the ratios against loose files. Usage::

    .venv/bin/python benchmarks/bench_shards.py [--images 200] [--per-shard 50] [--workers 0] [--batch-size 16]
        [--repeat 2] [--preset tiny|base] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench_caption_workers import FOLDERS, build_captioner
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.jobs.batch import caption_files
from captionkit.jobs.inputs import collect_images
from captionkit.jobs.outputs import RecordWriter
from captionkit.shards.writing import Sample, write_parquet, write_webdataset


def images_per_second(captioner: Captioner, source: Path, config: DecodingConfig, args) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        writer = RecordWriter(Path(scratch) / "out.jsonl", "jsonl")
        start = time.perf_counter()
        paths = collect_images([source])  # listing (and indexing shards) is part of the cost
        summary = caption_files(captioner, paths, config, writer, args.batch_size, workers=args.workers)
        seconds = time.perf_counter() - start
        writer.close()
    assert summary.captioned == args.images, f"{summary.errors} images failed"
    return args.images / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "base"))
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    photos = [path for folder in FOLDERS for path in sorted(folder.glob("*.jpg"))][: args.images]
    assert len(photos) == args.images, f"only {len(photos)} JPEGs in {FOLDERS}"
    captioner = build_captioner(args.preset, args.device)
    config = DecodingConfig(max_new_tokens=8, num_beams=1)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        files = root / "files"
        files.mkdir()
        for index, photo in enumerate(photos):  # unique names: the two datasets may share a file name
            (files / f"{index:06d}.jpg").write_bytes(photo.read_bytes())
        samples = [Sample(f"{i:06d}", photo.read_bytes(), "a photo") for i, photo in enumerate(photos)]
        write_webdataset(samples, root / "shards", args.per_shard)
        write_parquet(samples, root / "parquet" / "part-0.parquet", row_group_size=args.per_shard)
        sources = {"files": files, "webdataset": root / "shards", "parquet": root / "parquet"}
        print(
            f"{args.images} JPEGs, preset {args.preset}, device {captioner.device}, batch {args.batch_size}, "
            f"workers {args.workers}, {args.per_shard} samples per shard / row group, torch threads "
            f"{torch.get_num_threads()}"
        )
        for source in sources.values():  # warm-up: page cache, allocator
            images_per_second(captioner, source, config, args)
        best = dict.fromkeys(sources, 0.0)
        for _ in range(args.repeat):
            for name, source in sources.items():
                best[name] = max(best[name], images_per_second(captioner, source, config, args))
    for name, rate in best.items():
        print(f"{name:10s} {rate:8.1f} images/s  ({rate / best['files']:.2f}x files)")


if __name__ == "__main__":
    main()
