"""The decoding engine's per-call time, this tree's against a baseline copy of ``src``, side by side in one process.

Model compute is small at the ``tiny`` preset, so its timings show what the token loop spends besides the model:
Python, allocations and many small operations per step (on a GPU, kernel launches and host syncs).

    cp -r src /tmp/base_src   # before a change (or: git archive HEAD src | tar -x -C /tmp/base)
    python benchmarks/bench_decode_overhead.py --baseline /tmp/base_src

The baseline's ``captionkit`` package is imported under another name (``captionkit_baseline``, a rewritten copy in a
temporary directory), so both engines run in this process on models built alike (same seed, same weights) and the
same encoded batch. Calls alternate between the engines, so load from other processes hits both alike. Per case the
table gives each engine's median and spread (min-max) over ``--repeats`` calls, their ratio, and whether both
engines' captions agree (tokens exactly, scores to 1e-5 relative).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
BASELINE_NAME = "captionkit_baseline"

# name: (preset, images, beams, strategy)
CASES = {
    "tiny b256 beam4": ("tiny", 256, 4, "beam"),
    "tiny b256 greedy": ("tiny", 256, 1, "greedy"),
    "tiny b256 sample": ("tiny", 256, 1, "sample"),
    "tiny b8 beam4": ("tiny", 8, 4, "beam"),
    "base b8 beam4": ("base", 8, 4, "beam"),
}


def import_baseline(source: Path, into: Path) -> ModuleType:
    """``source``/captionkit copied to ``into`` as :data:`BASELINE_NAME`, its imports renamed, and imported."""
    target = into / BASELINE_NAME
    shutil.copytree(source / "captionkit", target, ignore=shutil.ignore_patterns("__pycache__"))
    pattern = re.compile(r"\bcaptionkit(?=\.[a-z_]|\s+import\b|\s*$)", re.MULTILINE)
    for path in target.rglob("*.py"):
        path.write_text(pattern.sub(BASELINE_NAME, path.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module(BASELINE_NAME)


class Engine:
    """One package's model (built from the preset with seed 0) and decoding call for one case."""

    def __init__(self, package: str, case: tuple[str, int, int, str]) -> None:
        preset, images, beams, strategy = case
        decoding = importlib.import_module(f"{package}.decoding")
        vit_gpt2 = importlib.import_module(f"{package}.models.vit_gpt2")
        torch.manual_seed(0)
        last = vit_gpt2.PRESETS[preset].vocab_size - 1
        self.model = vit_gpt2.VitGpt2Model.from_config(
            preset, bos_token_id=last, eos_token_id=last, pad_token_id=last
        ).eval()
        size = self.model.config.image_size
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randn(images, 3, size, size, generator=generator).clamp(-1, 1)
        settings: dict[str, Any] = {"max_new_tokens": 20, "num_beams": beams}
        if strategy != "sample":
            settings["min_new_tokens"] = 20  # as `captionkit benchmark`: every caption runs to the limit
        if strategy == "sample":
            settings.update(do_sample=True, seed=7, top_k=50)
        self.config = decoding.DecodingConfig(**settings)
        self.generate = decoding.generate
        with torch.inference_mode():
            self.encoded = self.model.encode(pixels)

    def __call__(self) -> list[list[tuple[list[int], float]]]:
        found = self.generate(self.model, encoded=self.encoded, config=self.config)
        return [[(h.token_ids, h.score) for h in image] for image in found]


def same_captions(a: list, b: list) -> bool:
    if [[tokens for tokens, _ in image] for image in a] != [[tokens for tokens, _ in image] for image in b]:
        return False
    pairs = zip(a, b, strict=True)
    scores = [(x, y) for image_a, image_b in pairs for (_, x), (_, y) in zip(image_a, image_b, strict=True)]
    return all(abs(x - y) <= 1e-5 * max(1.0, abs(y)) for x, y in scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a directory holding a captionkit package")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per engine, alternating")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        import_baseline(args.baseline, Path(temporary))
        print(f"{'case':18} {'baseline ms (min-max)':>25} {'this tree ms (min-max)':>25} {'speed-up':>8}  same")
        for name in args.cases:
            engines = {"baseline": Engine(BASELINE_NAME, CASES[name]), "this tree": Engine("captionkit", CASES[name])}
            captions = {engine: run() for engine, run in engines.items()}  # and a warm-up
            seconds: dict[str, list[float]] = {engine: [] for engine in engines}
            in_turn = list(engines.items())
            for repeat in range(args.repeats):
                # Each engine goes first in every other repeat: what running second gains or loses falls on both.
                for engine, run in in_turn if repeat % 2 == 0 else in_turn[::-1]:
                    began = time.perf_counter()
                    run()
                    seconds[engine].append((time.perf_counter() - began) * 1000)
            cells = [f"{statistics.median(v):8.1f} ({min(v):7.1f}-{max(v):7.1f})" for v in seconds.values()]
            ratio = statistics.median(seconds["baseline"]) / statistics.median(seconds["this tree"])
            same = same_captions(captions["baseline"], captions["this tree"])
            print(f"{name:18} {cells[0]:>25} {cells[1]:>25} {ratio:7.2f}x  {same}", flush=True)


if __name__ == "__main__":
    main()
