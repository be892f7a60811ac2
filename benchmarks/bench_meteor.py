"""METEOR on COCO val2017 (first caption against the other four): METEOR in Python (the default) against the jar
through pycocoevalcap, each run as its own process, as a user would run it.

Rows: the jar (``pycocoevalcap.meteor.Meteor``), captionkit cold (a fresh cache folder: the jar's data files are
read and the cache built) and captionkit warm (the same folder again). Both get the same PTB-tokenized captions
(captionkit's tokenizer, equal to pycocoevalcap's). Prints wall-clock seconds, the ratio to the jar, and the
agreement: corpus difference, largest segment difference and the number of segments more than 1e-3 apart. Usage::

    .venv/bin/python benchmarks/bench_meteor.py [--images 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _data import SHARED_DATA

DATA = SHARED_DATA / "coco" / "captions_val2017.json"


def tokenized(images: int) -> tuple[list[str], list[list[str]]]:
    from captionkit.evaluation.tokenize import tokenize_captions

    data = json.loads(DATA.read_text(encoding="utf-8"))
    by_image: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["caption"])
    groups = list(by_image.values())[:images]
    flat = tokenize_captions(c for g in groups for c in g[1:])
    refs, start = [], 0
    for g in groups:
        refs.append(flat[start : start + len(g) - 1])
        start += len(g) - 1
    return tokenize_captions(g[0] for g in groups), refs


def child(kind: str, source: Path, target: Path) -> None:
    """One timed run: read the captions, score them, write ``[corpus, per_image]``."""
    candidates, references = json.loads(source.read_text(encoding="utf-8"))
    if kind == "jar":
        from pycocoevalcap.meteor.meteor import Meteor

        gts = {i: refs for i, refs in enumerate(references)}
        res = {i: [c] for i, c in enumerate(candidates)}
        corpus, per_image = Meteor().compute_score(gts, res)
    else:
        from captionkit.evaluation.meteor.native import meteor_python

        corpus, per_image = meteor_python(candidates, references)
    target.write_text(json.dumps([float(corpus), [float(s) for s in per_image]]), encoding="utf-8")


def timed(kind: str, source: Path, target: Path, env: dict[str, str]) -> tuple[float, float, list[float]]:
    start = time.perf_counter()
    command = [sys.executable, __file__, "--child", kind, str(source), str(target)]
    subprocess.run(command, check=True, env=env)
    seconds = time.perf_counter() - start
    corpus, per_image = json.loads(target.read_text(encoding="utf-8"))
    return seconds, corpus, per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SOURCE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "captions.json", Path(folder) / "scores.json"
        source.write_text(json.dumps(tokenized(args.images)), encoding="utf-8")
        env = {**os.environ, "CAPTIONKIT_CACHE": str(Path(folder) / "cache")}
        rows = {"jar (pycocoevalcap)": timed("jar", source, target, env)}
        rows["captionkit cold"] = timed("captionkit", source, target, env)
        rows["captionkit warm"] = timed("captionkit", source, target, env)
    jar_seconds, jar_corpus, jar_images = rows["jar (pycocoevalcap)"]
    print(f"METEOR on {args.images} COCO val2017 images, one process each")
    for name, (seconds, corpus, per_image) in rows.items():
        worst = max(abs(a - b) for a, b in zip(per_image, jar_images, strict=True))
        apart = sum(abs(a - b) > 1e-3 for a, b in zip(per_image, jar_images, strict=True))
        print(
            f"  {name:<20} {seconds:7.2f} s  x{jar_seconds / seconds:5.2f}  corpus {corpus:.6f} "
            f"({corpus - jar_corpus:+.2e})  worst segment {worst:.2e}  segments > 1e-3: {apart}"
        )


if __name__ == "__main__":
    main()
