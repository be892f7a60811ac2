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
import time
from pathlib import Path

import torch

from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.export.onnx import export_onnx, load_onnx_captioner
from captionkit.inputs import collect_images

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco" / "val2017"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=Path, default=PHOTOS)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        export_onnx(args.model, Path(scratch) / "onnx")
        engines = {
            "pytorch": Captioner.from_pretrained(args.model, device="cpu"),
            "onnxruntime": load_onnx_captioner(Path(scratch) / "onnx", threads=args.threads),
        }
        config = DecodingConfig(num_beams=args.beams)
        paths = collect_images([args.images])[: args.count]
        images = engines["pytorch"].load_images(paths)
        captions: dict[str, list[list[int]]] = {name: [] for name in engines}
        seconds = dict.fromkeys(engines, 0.0)
        for captioner in engines.values():  # warm-up
            captioner.caption_pil(images[: args.batch_size], config)
        for start in range(0, len(images), args.batch_size):
            batch = images[start : start + args.batch_size]
            for name, captioner in engines.items():
                began = time.perf_counter()
                found = captioner.caption_pil(batch, config)
                seconds[name] += time.perf_counter() - began
                captions[name] += [per_image[0].token_ids for per_image in found]
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
    main()
