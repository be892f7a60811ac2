"""ONNX Runtime against PyTorch through the same decoding engine: caption identity and images/s, one run.

Exports ``--model`` with ``captionkit export onnx`` into a temporary directory and captions the same photos with
both (batches interleaved, greedy by default). Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_onnx.py --model DIR [--images DIR] [--count 64] \
        [--beams 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from _side_by_side import caption_side_by_side, photo_arguments, photo_paths, run_main
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.export.onnx import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    photo_arguments(parser, beams=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        export_onnx(args.model, Path(scratch) / "onnx")
        engines = {
            "pytorch": Captioner.from_pretrained(args.model, device="cpu"),
            "onnxruntime": Captioner.from_onnx(Path(scratch) / "onnx", threads=args.threads),
        }
        config = DecodingConfig(num_beams=args.beams)
        paths = photo_paths(args.images, args.count)
        images = engines["pytorch"].load_images(paths)
        captions, times = caption_side_by_side(engines, images, config, args.batch_size)
    seconds = {name: sum(values) for name, values in times.items()}
    same = sum(a == b for a, b in zip(captions["pytorch"], captions["onnxruntime"], strict=True))
    result = {
        "model": args.model,
        "images": f"{len(paths)} photos from {args.images}",
        "beams": args.beams,
        "threads": args.threads,
        "captions_identical": same == len(paths),
        "caption_agreement": same / len(paths),
        "images_per_s": {name: len(paths) / value for name, value in seconds.items()},
        "onnx_speedup": seconds["pytorch"] / seconds["onnxruntime"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_main("bench_onnx", main)
