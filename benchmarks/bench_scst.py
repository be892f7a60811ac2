"""Cross-entropy then SCST against cross-entropy alone, with the same budget, on held-out images.

Per data set, four runs of the same XE recipe and seed:

* ``XE``: cross-entropy alone for ``xe_steps + more`` steps;
* ``XE start``: cross-entropy for ``xe_steps`` steps (its schedule over those steps);
* ``XE+SCST``: ``more`` self-critical steps (``train.objective: scst``, CIDEr-D reward against every reference of
  the image) from the ``XE start`` model: the same number of optimizer steps as ``XE``;
* ``XE, same time``: cross-entropy alone for as many steps as fit in the seconds ``XE start`` + SCST took (an SCST
  step samples ``num_samples`` captions per image, so it costs more than an XE step); the step count is derived
  from the ``XE`` run's speed, so it is only as exact as the machine is quiet.

``scenes``: the synthetic scenes with the demo's model and optimizer, trained on every neutral caption of a scene
(the canonical caption and its five paraphrases: word orders, mirrored relations, synonyms), as COCO models train on
all five references; scored against those references on 300 held-out test scenes. ``flickr8k``: the 200-image
Flickr8k subset in ``shared/data`` (150 train, 50 val+test held out, 5 references each), a tiny ViT-GPT2 from
scratch: absolute scores are low; the comparison between arms is what counts. Every model is scored by greedy
captions of the held-out images: CIDEr-D, BLEU-4, mean caption length in words. By default the test scenes are new
renderings of descriptions that may occur in training; ``--held-out-descriptions 0.1`` makes it the demo's
compositional test (two-object descriptions never seen in training). Training seconds include the XE start's for
the SCST arm. Usage::

    .venv/bin/python benchmarks/bench_scst.py --seeds 0 1 2           # both data sets, ~60 minutes on 2 cores
    .venv/bin/python benchmarks/bench_scst.py --datasets scenes --scale 0.2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from _data import SHARED_DATA
from _tables import markdown_table
from captionkit.api import Captioner
from captionkit.config import TrainConfig, from_dict, merge, read_yaml
from captionkit.data.records import CaptionRecord
from captionkit.data.sources import load_records
from captionkit.data.synthetic import SceneOptions, write_synthetic_dataset
from captionkit.decoding import DecodingConfig, generate, to_captions
from captionkit.demo import DemoData
from captionkit.evaluation.api import score_captions
from captionkit.training.loop import train

COLUMNS = ("data", "seed", "arm", "steps (XE + SCST)", "train s", "CIDEr-D", "BLEU-4", "mean length")
QUIET = {"train": {"tensorboard": False, "checkpoint_every": 0, "log_every": 50}}

# What each data set trains with: the XE recipe (a packaged one for the scenes), and what the SCST stage changes in it.
SCENES_SCST = {"train": read_yaml("scenes-xe-scst")["train"]}
FLICKR_XE: dict[str, Any] = {
    "model": {
        "family": "vit-gpt2",
        "preset": "tiny",
        "overrides": {"image_size": 64, "patch_size": 8, "decoder_positions": 32},
        "position_init": "sincos",
    },
    "tokenizer": {"vocab_size": 2000},
    "data": {"cache_images": True, "max_length": 24},
    "train": {
        "batch_size": 32,
        "lr": 2.0e-3,
        "betas": [0.9, 0.98],
        "warmup_steps": 30,
        "min_lr_ratio": 0.0,
        "eval_every": 100,
        "eval_images": 25,
    },
}
FLICKR_SCST = {
    "train": {
        "objective": "scst",
        "batch_size": 16,
        "lr": 1.0e-4,
        "warmup_steps": 10,
        "schedule": "constant",
        # A penalty on samples cut at the limit: a model trained from scratch on 150 images samples long rambling
        # captions at first.
        "scst": {"num_samples": 5, "baseline": "mean", "max_new_tokens": 16, "unfinished_penalty": 0.2},
    },
}


def held_out(records: list[CaptionRecord], splits: tuple[str, ...]) -> tuple[list[CaptionRecord], dict[str, list[str]]]:
    """One record per held-out image and all its neutral captions."""
    references: dict[str, list[str]] = defaultdict(list)
    firsts: dict[str, CaptionRecord] = {}
    for record in records:
        if record.split in splits and record.style == "neutral":
            references[record.image_id].append(record.caption)
            firsts.setdefault(record.image_id, record)
    return list(firsts.values()), dict(references)


def score(
    run: Path, images: list[CaptionRecord], references: dict[str, list[str]], max_tokens: int
) -> dict[str, float]:
    """CIDEr-D, BLEU-4 and mean length (words) of the run's greedy captions of ``images``."""
    captioner = Captioner.from_pretrained(run)
    pixels = torch.from_numpy(captioner.preprocessing(captioner.load_images([r.image_path for r in images])))
    texts: list[str] = []
    for start in range(0, len(pixels), 64):
        found = generate(captioner.model, pixels[start : start + 64], config=DecodingConfig(max_new_tokens=max_tokens))
        texts.extend(per_image[0].caption for per_image in to_captions(found, captioner.tokenizer))
    candidates = {record.image_id: text for record, text in zip(images, texts, strict=True)}
    scores = score_captions(references, candidates, "BLEU,CIDEr", allow_empty=True).scores
    return {
        "cider_d": scores["CIDEr"],
        "bleu_4": scores["Bleu_4"],
        "mean_length": sum(len(t.split()) for t in texts) / max(len(texts), 1),
    }


def config_of(recipe: dict[str, Any], where: str) -> TrainConfig:
    return from_dict(TrainConfig, merge(recipe, QUIET), where=where)


def run_arms(
    name: str,
    xe_recipe: dict[str, Any],
    scst_recipe: dict[str, Any],
    steps: tuple[int, int],
    heldout: tuple[list[CaptionRecord], dict[str, list[str]]],
    work: Path,
    seed: int,
) -> list[dict[str, Any]]:
    """Train XE alone, the XE start and SCST from it on one data set; score each on the held-out images."""
    xe_steps, extra = steps
    xe_recipe = merge(xe_recipe, {"train": {"seed": seed}})
    work = work / f"seed-{seed}"
    max_tokens = xe_recipe.get("data", {}).get("max_length", 40) - 1
    rows = []

    def run(arm: str, recipe: dict[str, Any], folder: str, counts: str, earlier: float = 0.0) -> float:
        print(f"[{name}] {arm} ({counts} steps) ...", flush=True)
        result = train(config_of(recipe, name), work / folder)
        seconds = earlier + result.seconds
        rows.append({"data": name, "seed": seed, "arm": arm, "steps": counts, "train_seconds": seconds})
        rows[-1] |= score(work / folder, *heldout, max_tokens)
        print(f"[{name}] {arm}: {rows[-1]}", flush=True)
        return seconds

    xe_seconds = run("XE", merge(xe_recipe, {"train": {"steps": xe_steps + extra}}), "xe", f"{xe_steps + extra} + 0")
    start = run("XE start", merge(xe_recipe, {"train": {"steps": xe_steps}}), "xe-start", f"{xe_steps} + 0")
    scst = merge(
        merge(xe_recipe, scst_recipe), {"model": {"pretrained": str(work / "xe-start")}, "train": {"steps": extra}}
    )
    scst_seconds = run("XE+SCST", scst, "xe-scst", f"{xe_steps} + {extra}", start)
    same_time = round((xe_steps + extra) * scst_seconds / xe_seconds)
    run("XE, same time", merge(xe_recipe, {"train": {"steps": same_time}}), "xe-same-time", f"{same_time} + 0")
    return rows


def scenes(work: Path, scale: float, held_out_fraction: float, seeds: list[int]) -> list[dict[str, Any]]:
    demo = DemoData()
    options = SceneOptions(held_out_fraction=held_out_fraction, order=demo.order, layout=demo.layout, grid=demo.grid)
    data_file = write_synthetic_dataset(
        work / "data", int(4000 * scale) or 64, 50, int(300 * scale) or 20, demo.seed, demo.image_size, options
    )
    recipe = merge(
        read_yaml("scenes-xe"),
        {"data": {"train": str(data_file), "val": str(data_file)}, "train": {"eval_every": 1000, "eval_images": 50}},
    )
    heldout = held_out(load_records(data_file), ("test",))
    xe_steps = max(int(recipe["train"]["steps"] * scale), 2)
    more = max(int(SCENES_SCST["train"]["steps"] * scale), 2)
    recipe = merge(recipe, {"train": {"warmup_steps": max(xe_steps // 10, 1)}})
    scst = merge(SCENES_SCST, {"train": {"eval_every": 1000, "eval_images": 50}})  # validation as in the XE runs
    return [row for seed in seeds for row in run_arms("scenes", recipe, scst, (xe_steps, more), heldout, work, seed)]


def flickr8k(work: Path, scale: float, seeds: list[int]) -> list[dict[str, Any]]:
    source = SHARED_DATA / "flickr8k"
    recipe = merge(FLICKR_XE, {"data": {"train": str(source)}})  # val images: the trainer's own val split
    heldout = held_out(load_records(source), ("val", "test"))
    xe_steps, more = max(int(800 * scale), 2), max(int(200 * scale), 2)
    return [
        row
        for seed in seeds
        for row in run_arms("flickr8k", recipe, FLICKR_SCST, (xe_steps, more), heldout, work, seed)
    ]


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [
        [
            row["data"],
            str(row["seed"]),
            row["arm"],
            row["steps"],
            f"{row['train_seconds']:.0f}",
            f"{row['cider_d']:.3f}",
            f"{row['bleu_4']:.3f}",
            f"{row['mean_length']:.1f}",
        ]
        for row in rows
    ]
    print(markdown_table(COLUMNS, cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["scenes", "flickr8k"], choices=["scenes", "flickr8k"])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply step budgets and scene counts")
    parser.add_argument(
        "--held-out-descriptions",
        type=float,
        default=0.0,
        help="share of two-object scene descriptions kept out of training (the demo's compositional test uses 0.1; "
        "0: test scenes are new renderings of descriptions that may occur in training)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (every arm, every data set)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        for name in args.datasets:
            if name == "scenes":
                rows += scenes(work / name, args.scale, args.held_out_descriptions, args.seeds)
            else:
                rows += flickr8k(work / name, args.scale, args.seeds)
    print_table(rows)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
