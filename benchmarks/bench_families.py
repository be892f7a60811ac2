"""Train every model family on the synthetic scenes with one budget and compare them in one table.

Each family trains from scratch with the demo recipe's schedule (``recipes/demo.yaml``: steps, batch, learning rate,
warmup; canonical captions) at the demo's 32 px, sized to CPU-trainable widths, everything trainable (captionkit has
no pretrained encoder weights at these sizes, so the frozen encoders of the ``base`` presets would stay random).
Then each is loaded back from its checkpoint and caption the held-out test scenes greedily. Columns: parameters,
seconds per training step (periodic validation included), inference images/s (greedy decoding of preprocessed
images, batches of 64), exact match against the canonical caption, BLEU-4 and CIDEr-D against all neutral
references. Usage::

    .venv/bin/python benchmarks/bench_families.py                   # the full run (minutes per family on a CPU)
    .venv/bin/python benchmarks/bench_families.py --steps 20 --train-images 400 --test-images 40   # a quick check

Timings are comparable only within one run on one quiet machine; results also go to ``--json``.
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

from _tables import markdown_table
from captionkit.api import Captioner
from captionkit.config import TrainConfig, from_dict, merge, read_yaml
from captionkit.data.records import CaptionRecord
from captionkit.data.sources import load_records
from captionkit.data.splits import select_split
from captionkit.data.synthetic import SceneOptions, write_synthetic_dataset
from captionkit.decoding import DecodingConfig, generate, to_captions
from captionkit.demo import DemoData, demo_recipe_path
from captionkit.evaluation.api import score_captions
from captionkit.training.loop import train

# The model section per family; the rest of the recipe (data, schedule) is the demo's, the same for all.
VIT_32PX = {"image_size": 32, "patch_size": 4, "encoder_hidden_size": 64, "encoder_heads": 2, "encoder_layers": 2}
MODELS: dict[str, dict[str, Any]] = {
    "vit-gpt2": {},  # the demo recipe's own model
    "prefix-gpt2": {
        "family": "prefix-gpt2",
        "preset": "small",
        "overrides": {
            **VIT_32PX,
            "encoder_intermediate_size": 256,
            "decoder_layers": 2,
            "decoder_positions": 32,
            "decoder_dropout": 0.0,
            "freeze_encoder": False,
        },
        "position_init": "sincos",
    },
    "cnn-lstm": {
        "family": "cnn-lstm",
        "preset": "small",
        "overrides": {"image_size": 32, "dropout": 0.0},
        "position_init": "random",
    },
    "cnn-lstm-attention": {
        "family": "cnn-lstm-attention",
        "preset": "small",
        "overrides": {"image_size": 32, "dropout": 0.0},
        "position_init": "random",
    },
}
COLUMNS = ("family", "parameters", "s/step", "images/s", "exact", "BLEU-4", "CIDEr-D")


def family_config(family: str, data_file: Path, steps: int | None, batch_size: int | None) -> TrainConfig:
    data = read_yaml(demo_recipe_path())
    if MODELS[family]:
        data["model"] = MODELS[family]
    data = merge(data, {"data": {"train": str(data_file), "val": str(data_file)}})
    if steps is not None:
        data = merge(data, {"train": {"steps": steps, "warmup_steps": min(100, max(1, steps // 10))}})
    if batch_size is not None:
        data = merge(data, {"train": {"batch_size": batch_size}})
    return from_dict(TrainConfig, data, where=f"{family} benchmark")


def test_references(records: list[CaptionRecord]) -> tuple[list[CaptionRecord], dict[str, list[str]]]:
    """The test images (one record each, canonical caption first) and all their neutral captions."""
    references: dict[str, list[str]] = defaultdict(list)
    firsts: dict[str, CaptionRecord] = {}
    for record in select_split(records, "test"):
        if record.style == "neutral":
            references[record.image_id].append(record.caption)
            firsts.setdefault(record.image_id, record)
    return list(firsts.values()), dict(references)


def caption_all(captioner: Captioner, images: torch.Tensor, max_new_tokens: int) -> tuple[list[str], float]:
    """Greedy captions of preprocessed ``images`` in batches of 64, and the seconds decoding took."""
    config = DecodingConfig(max_new_tokens=max_new_tokens)
    texts: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(images), 64):
        batch = images[start : start + 64].to(captioner.device)
        found = generate(captioner.model, batch, config=config)
        texts.extend(per_image[0].caption for per_image in to_captions(found, captioner.tokenizer))
    if captioner.device.type == "cuda":
        torch.cuda.synchronize()
    return texts, time.perf_counter() - started


def run_family(family: str, data_file: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    config = family_config(family, data_file, args.steps, args.batch_size)
    result = train(config, work / family)
    captioner = Captioner.from_pretrained(work / family)
    tests, references = test_references(load_records(data_file))
    pixels = torch.from_numpy(captioner.preprocessing(captioner.load_images([r.image_path for r in tests])))
    texts, seconds = caption_all(captioner, pixels, config.data.max_length)
    candidates = {record.image_id: text for record, text in zip(tests, texts, strict=True)}
    scores = score_captions(references, candidates, "BLEU,CIDEr", allow_empty=True).scores
    exact = sum(text == record.caption for record, text in zip(tests, texts, strict=True)) / len(tests)
    model = captioner.model
    return {
        "family": family,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": result.steps,
        "batch_size": config.train.batch_size,
        "seconds_per_step": result.seconds / max(result.steps, 1),
        "images_per_second": len(tests) / seconds,
        "exact_match": exact,
        "bleu_4": scores["Bleu_4"],
        "cider_d": scores["CIDEr"],
        "val_loss": result.val_loss,
        "test_images": len(tests),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [
        [
            row["family"],
            f"{row['parameters'] / 1e6:.2f}M",
            f"{row['seconds_per_step']:.3f}",
            f"{row['images_per_second']:.0f}",
            f"{row['exact_match']:.3f}",
            f"{row['bleu_4']:.3f}",
            f"{row['cider_d']:.3f}",
        ]
        for row in rows
    ]
    print(markdown_table(COLUMNS, cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=None, help="training steps per family (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--train-images", type=int, default=DemoData.num_train)
    parser.add_argument("--test-images", type=int, default=DemoData.num_test)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--work", type=Path, default=None, help="keep data and checkpoints here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    demo = DemoData()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        options = SceneOptions(
            held_out_fraction=demo.held_out_fraction, order=demo.order, layout=demo.layout, grid=demo.grid
        )
        data_file = write_synthetic_dataset(
            work / "data", args.train_images, demo.num_val, args.test_images, demo.seed, demo.image_size, options
        )
        rows = []
        for family in args.families:
            print(f"training {family} ...", flush=True)
            rows.append(run_family(family, data_file, work, args))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
