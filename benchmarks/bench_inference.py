"""captionkit's decoding against transformers' generate: the issue-11 target, reproducible on a quiet machine.

Runs ``captionkit benchmark`` for the settings of the target (ViT-B/16 + GPT-2 124M with random weights, beam 4,
batch 8, 20 forced tokens, 2 torch threads) and for greedy decoding, then prints one JSON list of the results
(each with ``speedup``, ``captions_identical`` and ``fraction_of_compute_limit``). Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_inference.py [--preset base] [--threads 2] \
        [--repeats 3] [--model DIR] [--images DIR]

The same figures for one setting: ``captionkit benchmark --preset base --beams 4 --batch-size 8 --max-length 20
--threads 2``. Target: ``speedup >= 1.5`` with ``captions_identical: true`` for beam 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from captionkit.benchmark import BenchmarkSettings, format_table, run_benchmark
from captionkit.cli._common import quiet_libraries
from captionkit.errors import CaptionkitError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", help="random-weight vit-gpt2 preset (ignored with --model)")
    parser.add_argument("--model", default=None, help="a vit-gpt2, BLIP or GIT checkpoint instead of a preset")
    parser.add_argument("--images", type=Path, default=None, help="folder of images (default: random pixels)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=20)
    args = parser.parse_args()
    quiet_libraries()  # as `captionkit benchmark`: generate's warnings about its own defaults are not results
    try:
        results = [run_one(args, beams) for beams in (4, 1)]
    except CaptionkitError as error:  # a bad argument or model: one line, as the command says it
        sys.exit(f"bench_inference: error: {error}")
    print(json.dumps(results, indent=2))


def run_one(args: argparse.Namespace, beams: int) -> dict[str, Any]:
    """One setting's result, its table printed on stderr."""
    settings = BenchmarkSettings(
        model=args.model,
        preset=None if args.model else args.preset,
        batch_size=args.batch_size,
        beams=beams,
        max_length=args.max_length,
        images=args.images,
        repeats=args.repeats,
        threads=args.threads,
    )
    result = run_benchmark(settings)
    print(format_table(result), file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
