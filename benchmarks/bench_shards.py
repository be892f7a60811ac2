"""Images per second of batch captioning from loose JPEG files vs WebDataset tar shards vs Parquet, and of the
default engine vs ``--engine ray`` on the same shards.

The same real JPEGs (Flickr8k and COCO val2017 from ../shared/data) are packed into tar shards and one Parquet file
in a scratch directory, then captioned by a randomly initialised tiny ViT + GPT-2 (32 px input: reading and
decoding dominate). Each layout is timed as its best of ``--repeat`` runs, alternating, after a warm-up; the lines
to compare are the ratios against loose files. The Ray rows (skipped with ``--no-ray`` or without the ``ray``
extra) run the WebDataset job on a local Ray with ``--ray-actors`` captioner actors, timed from the job's start to
its last record (actors load the model each run; Ray itself is started once, in the warm-up), against the default
engine's WebDataset figure. The ``listing pass`` line is the cost of the default engine's first read of the inputs
(``caption`` counts them in one pass, then reads them again to caption): one pass over each layout, as a share of
that layout's job. Usage::

    .venv/bin/python benchmarks/bench_shards.py [--images 200] [--per-shard 50] [--workers 0] [--batch-size 16]
        [--repeat 2] [--preset tiny|base] [--device cpu|cuda] [--no-ray] [--ray-actors 1]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import tempfile
import time
from pathlib import Path

import torch

from bench_caption_workers import FOLDERS, build_captioner
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.jobs.batch import caption_files
from captionkit.jobs.inputs import collect_images, iter_inputs
from captionkit.jobs.outputs import RecordWriter
from captionkit.jobs.ray_engine import RaySettings, caption_on_ray
from captionkit.shards import parquet, tar
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


def listing_seconds(source: Path, args) -> float:
    """The best of ``--repeat`` passes over the inputs as ``caption`` counts them (every shard indexed anew: at web
    scale the few indexes cached are not the ones the next pass starts with; the page cache stays warm)."""
    best = float("inf")
    for _ in range(args.repeat):
        tar._cached_index.cache_clear()
        parquet._cached_index.cache_clear()
        start = time.perf_counter()
        count = sum(1 for _ in iter_inputs([source]))
        best = min(best, time.perf_counter() - start)
    assert count == args.images
    return best


def ray_images_per_second(model: Path, captioner: Captioner, source: Path, config: DecodingConfig, args) -> float:
    settings = RaySettings(None, args.ray_actors, 0.0)
    with tempfile.TemporaryDirectory() as scratch:
        writer = RecordWriter(Path(scratch) / "out.jsonl", "jsonl")
        start = time.perf_counter()
        todo = enumerate(collect_images([source]))
        with contextlib.redirect_stderr(io.StringIO()):  # the engine's progress lines
            summary = caption_on_ray(
                todo, args.images, str(model), args.device, config, captioner.preprocessing, captioner.limits, writer,
                args.batch_size, settings,
            )  # fmt: skip
        seconds = time.perf_counter() - start
        writer.close()
    assert summary.captioned == args.images, f"{summary.errors} images failed"
    return args.images / seconds


def ray_rows(captioner: Captioner, shards: Path, config: DecodingConfig, args, default_rate: float) -> None:
    """The default engine vs --engine ray on the same shards, side by side."""
    import ray

    model = shards.parent / "model"
    captioner.save_pretrained(model)
    try:
        ray_images_per_second(model, captioner, shards, config, args)  # warm-up: starts Ray
        rate = max(ray_images_per_second(model, captioner, shards, config, args) for _ in range(args.repeat))
    finally:
        ray.shutdown()
    print(f"{'default':10s} {default_rate:8.1f} images/s  (WebDataset, this process, workers {args.workers})")
    print(f"{'ray':10s} {rate:8.1f} images/s  ({rate / default_rate:.2f}x default; {args.ray_actors} actor(s))")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "base"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-ray", dest="ray", action="store_false")
    parser.add_argument("--ray-actors", type=int, default=1)
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
        for name, source in sources.items():
            seconds = listing_seconds(source, args)
            share = seconds / (args.images / best[name])
            print(f"listing pass, {name}: {seconds * 1000:.1f} ms, {share:.1%} of its job")
        if args.ray and importlib.util.find_spec("ray") is not None:
            ray_rows(captioner, sources["webdataset"], config, args, best["webdataset"])
        elif args.ray:
            print("ray rows skipped: pip install 'captionkit[ray]'")


if __name__ == "__main__":
    main()
