"""Half precision against fp32 on real images: caption agreement, token accuracy and speed, one run.

Loads ``--model`` twice with ``Captioner.from_pretrained``, in fp32 and in ``--dtype`` (bf16 by default; fp16 needs
a GPU), and captions the same images with both (batches interleaved, each going first in every other batch). A
trained model is what this is for: a random-weight one sits close to ties between tokens, so half precision flips
its captions far more often (the benchmark command's ``captions_equal`` share measures that case). Usage::

    .venv/bin/python benchmarks/bench_precision.py --model DIR [--images DIR] [--count 64] [--beams 4] \
        [--batch-size 8] [--threads 2] [--dtype bf16|fp16] [--device cpu|cuda]

Token accuracy: the share of positions (over the longer caption of each pair) where both have the same token.
A CPU with bf16 instructions (AVX-512 bf16, AMX) runs bf16 natively, one without emulates it: either way its speed
there says little about a GPU's.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from _side_by_side import caption_side_by_side, photo_arguments, photo_paths, run_main, token_accuracy
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    photo_arguments(parser, beams=4)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = {
        dtype: Captioner.from_pretrained(args.model, device=args.device, dtype=dtype) for dtype in ("fp32", args.dtype)
    }
    config = DecodingConfig(num_beams=args.beams)
    paths = photo_paths(args.images, args.count)
    images = engines["fp32"].load_images(paths)
    captions, times = caption_side_by_side(engines, images, config, args.batch_size)
    pairs = list(zip(captions["fp32"], captions[args.dtype], strict=True))
    result = {
        "model": args.model,
        "images": f"{len(paths)} images from {args.images}",
        "device": str(engines["fp32"].device),
        "beams": args.beams,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "caption_equality": sum(a == b for a, b in pairs) / len(pairs),
        "token_accuracy": token_accuracy(pairs),
        "images_per_s": {name: len(paths) / sum(values) for name, values in times.items()},
        "median_batch_s": {name: statistics.median(values) for name, values in times.items()},
        f"{args.dtype}_speedup": sum(times["fp32"]) / sum(times[args.dtype]),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_main("bench_precision", main)
