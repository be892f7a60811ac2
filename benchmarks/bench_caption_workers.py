"""Images per second of batch captioning with image decoding in-process (0 workers) vs in 2 DataLoader workers.

Captions real JPEGs (Flickr8k and COCO val2017 from ../shared/data, up to 640 px) with a randomly initialised
ViT + GPT-2 of the given preset: ``tiny`` (32 px input, decoding dominates) or ``base`` (224 px, ViT-B + GPT-2
sized, model compute dominates). Both settings run in the same process, alternating, each timed as its best of
``--repeat`` runs after a warm-up; the line to compare is the ratio.

Each setting also runs with the batches the job makes on a CPU (``float32``: rescaled and normalised image by image
in the workers) and with those it makes for a GPU (``uint8``: resized only, normalised a batch at a time in the main
process by ``normalise_on_device``, here on the CPU); the records of both must be equal. The loader alone (decoding
and preprocessing, no model) is timed the same two ways at ``--loader-size`` px, the base preset's input, where the
pixel bytes that cross between processes weigh more than at the tiny model's 32 px. Usage::

    .venv/bin/python benchmarks/bench_caption_workers.py [--preset tiny|base] [--images 300] [--workers 2]
        [--batch-size 16] [--beams 1] [--max-length 20] [--repeat 2] [--device cpu|cuda] [--loader-size 224]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from _data import SHARED_DATA
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.images import ImageLimits, Preprocessing
from captionkit.jobs import batch
from captionkit.jobs.outputs import RecordWriter
from captionkit.jobs.pipeline import load_batches, normalise_on_device
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


@contextmanager
def batches_as(way: str) -> Iterator[None]:
    """Within: the job's loader makes its batches ``way`` ("float32" or "uint8"), whatever the device."""
    load_items = batch.load_items

    def batches(*args, **kwargs):
        return load_items(*args, **(kwargs | {"uint8": way == "uint8"}))

    batch.load_items = batches
    try:
        yield
    finally:
        batch.load_items = load_items


def images_per_second(
    captioner: Captioner, paths: list[Path], config: DecodingConfig, args, workers: int
) -> tuple[float, str]:
    """Images per second of one job over ``paths``, and the records it wrote."""
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "out.jsonl"
        writer = RecordWriter(output, "jsonl")
        start = time.perf_counter()
        summary = batch.caption_files(captioner, paths, config, writer, args.batch_size, workers=workers)
        seconds = time.perf_counter() - start
        writer.close()
        records = output.read_text()
    assert summary.captioned == len(paths), f"{summary.errors} images failed"
    return len(paths) / seconds, records


def loader_images_per_second(paths: list[Path], args, workers: int, way: str) -> float:
    """Images per second of the loader alone at ``--loader-size``, normalised as the job would (``way``)."""
    preprocessing = Preprocessing.for_size(args.loader_size, args.loader_size)
    uint8 = way == "uint8"
    start = time.perf_counter()
    for loaded in load_batches(paths, preprocessing, ImageLimits(), args.batch_size, workers, uint8=uint8):
        if uint8:
            normalise_on_device(preprocessing, loaded.pixels)
    return len(paths) / (time.perf_counter() - start)


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
    parser.add_argument("--loader-size", type=int, default=224)
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
    settings = [(workers, way) for workers in (0, args.workers) for way in ("float32", "uint8")]
    best = dict.fromkeys(settings, 0.0)
    loader = dict.fromkeys(settings, 0.0)
    records: dict[tuple[int, str], str] = {}
    for _ in range(args.repeat):
        for workers, way in settings:
            with batches_as(way):
                rate, records[workers, way] = images_per_second(captioner, paths, config, args, workers)
            best[workers, way] = max(best[workers, way], rate)
            loader[workers, way] = max(loader[workers, way], loader_images_per_second(paths, args, workers, way))
    assert len(set(records.values())) == 1, "the records differ between settings"
    print("caption job (records equal in every setting):")
    _print_ways(best)
    ratio = best[args.workers, "float32"] / best[0, "float32"]
    print(f"  ratio workers={args.workers} / workers=0 (float32, the CPU job's batches): {ratio:.2f}x")
    print(f"loader alone at {args.loader_size} px (decode + preprocess, no model):")
    _print_ways(loader)


def _print_ways(rates: dict[tuple[int, str], float]) -> None:
    for workers in sorted({workers for workers, _ in rates}):
        cpu, gpu = rates[workers, "float32"], rates[workers, "uint8"]
        print(f"  workers={workers}: float32 {cpu:8.1f}  uint8 {gpu:8.1f} images/s  uint8/float32 {gpu / cpu:.2f}x")


if __name__ == "__main__":
    main()
