"""Helpers of ``benchmarks/gpu_check.sh``: the environment, a random-weight model saved to a directory, a folder of
photos replicated to a size, the train recipe, the exact-resume check, and the JSON summary of every step's output.

    python benchmarks/gpu_check.py env
    python benchmarks/gpu_check.py save-model DIR --preset base --captions DATA/flickr8k/captions.txt
    python benchmarks/gpu_check.py photos SRC DST --count 3000
    python benchmarks/gpu_check.py recipe FILE --preset base --data DATA --batch-size 64 --precision bf16 --steps 40
    python benchmarks/gpu_check.py resume-check OUT/resume_det.json --device cuda --preset base --deterministic
    python benchmarks/gpu_check.py summary PARTS --output OUT/gpu_summary.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

PHOTO_SUFFIXES = (".jpg", ".jpeg")


def environment() -> dict[str, Any]:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "device_memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
        "cpus": len(os.sched_getaffinity(0)),
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }


def caption_texts(captions_csv: Path, limit: int = 20_000) -> list[str]:
    """Flickr8k's captions.txt (image,caption rows) as a list of captions."""
    with captions_csv.open(encoding="utf-8", newline="") as handle:
        return [row["caption"] for _, row in zip(range(limit), csv.DictReader(handle), strict=False)]


def save_model(directory: Path, preset: str, captions_csv: Path, vocab_size: int) -> None:
    """A random-weight vit-gpt2 of ``preset`` with a BPE tokenizer trained on the captions, saved as a checkpoint."""
    import torch
    from transformers.utils import logging as hf_logging

    from captionkit.images import Preprocessing
    from captionkit.models.registry import create_model
    from captionkit.text import train_bpe_tokenizer
    from captionkit.training.checkpoint import save_checkpoint

    hf_logging.disable_progress_bar()
    tokenizer = train_bpe_tokenizer(caption_texts(captions_csv), vocab_size)
    torch.manual_seed(0)
    model = create_model("vit-gpt2", preset, tokenizer)
    size = model.config.image_size
    save_checkpoint(directory, model, tokenizer, Preprocessing.for_size(size, size))
    print(f"saved {preset} (vocabulary {tokenizer.vocab_size}) to {directory}")


def replicate_photos(source: Path, target: Path, count: int) -> None:
    """``count`` JPEGs in ``target``: the photos under ``source`` (recursive), hard-linked (copied across devices)
    round-robin under distinct names."""
    photos = sorted(p for p in source.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise SystemExit(f"{source}: no JPEGs found")
    target.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        copy = target / f"{index:05d}-{photo.name}"
        try:
            os.link(photo, copy)
        except OSError:
            shutil.copy(photo, copy)
    print(f"{count} files from {len(photos)} photos under {source} in {target}")


def write_recipe(path: Path, preset: str, data: Path, batch_size: int, precision: str, steps: int) -> None:
    """A from-scratch vit-gpt2 training recipe on Flickr8k (Karpathy json) with no evaluation and no checkpoints."""
    recipe = {
        "model": {"family": "vit-gpt2", "preset": preset},
        "tokenizer": {"vocab_size": 8000},
        "data": {"train": str(data / "flickr8k" / "dataset_flickr8k.json"), "workers": 8, "max_length": 24},
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "precision": precision,
            "eval_every": steps + 1,  # no evaluation and no checkpoint inside the measured steps
            "checkpoint_every": 0,
            "log_every": 5,
            "tensorboard": False,
        },
    }
    path.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")  # JSON is YAML


def resume_check(work: Path, device: str, preset: str, steps: int, batch_size: int, deterministic: bool) -> dict:
    """Train ``steps`` steps; train again, crash after step ``steps // 2`` (its checkpoint) and resume to the end;
    compare the two runs' final weights: bitwise, and the largest difference."""
    import torch
    from safetensors.torch import load_file

    from captionkit.config import load_train_config
    from captionkit.data.synthetic import write_synthetic_dataset
    from captionkit.training.loop import train

    half = steps // 2
    size = 224 if preset == "base" else 32
    scenes = write_synthetic_dataset(work / "scenes", 4 * batch_size, 8, 0, seed=0, image_size=size, workers=4)
    config = load_train_config(
        None,
        [
            f"data.train={scenes}",
            f"model.preset={preset}",
            "tokenizer.vocab_size=300",
            f"train.device={device}",
            f"train.steps={steps}",
            f"train.batch_size={batch_size}",
            "train.precision=bf16",
            f"train.deterministic={str(deterministic).lower()}",
            f"train.checkpoint_every={half}",
            f"train.eval_every={steps + 1}",
            "train.log_every=1",
            "train.tensorboard=false",
        ],
    )

    def crash(entry: dict[str, Any]) -> None:
        if entry["step"] == half + 1:
            raise RuntimeError("crash after the checkpoint")

    train(config, work / "reference")
    try:
        train(config, work / "resumed", log=crash)
    except RuntimeError as error:
        if "crash after the checkpoint" not in str(error):
            raise
    resumed = train(config, work / "resumed")
    first, second = (load_file(str(work / run / "model.safetensors")) for run in ("reference", "resumed"))
    differences = {name: (first[name].float() - second[name].float()).abs().max().item() for name in first}
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "preset": preset,
        "precision": "bf16",
        "deterministic": deterministic,
        "steps": steps,
        "resumed_from": resumed.resumed_from.name if resumed.resumed_from else None,
        "tensors": len(first),
        "tensors_bitwise_equal": sum(torch.equal(first[name], second[name]) for name in first),
        "bitwise_equal": all(torch.equal(first[name], second[name]) for name in first),
        "max_abs_difference": max(differences.values()),
    }


def summary(parts: Path, output: Path | None = None) -> dict[str, Any]:
    """Every step's figures from the files the steps left in ``parts``, written to ``output`` (default:
    ``parts/gpu_summary.json``). A file a killed step left torn (or one that is no JSON) is named with its error
    instead: one bad part must not cost the summary of all the others."""
    result: dict[str, Any] = {"steps": _steps(parts / "steps.tsv")}
    env = _json_part(parts / "env.json")
    if env is not None:
        result["environment"] = env
    benchmarks = {path.name: _json_part(path) for path in sorted(parts.glob("bench_*.json"))}
    found = {name: document for name, document in benchmarks.items() if document is not None}
    result["benchmark"] = [_benchmark_row(name, document) for name, document in found.items()]
    result["benchmark_json"] = found  # every figure of each run: its file does not come back from the GPU machine
    resume = [_json_part(path) for path in sorted(parts.glob("resume_*.json"))]
    if any(resume):
        result["exact_resume"] = [document for document in resume if document is not None]
    for name in ("caption", "demo"):
        document = _json_part(parts / f"{name}.json")
        if document is not None:
            result[name] = document
    metrics = parts / "train_metrics.jsonl"
    if metrics.exists():
        # The last logged entries: images/s and the step time split, as the trainer reports them.
        result["train"] = [_json_line(line) for line in metrics.read_text().splitlines()[-3:] if line.strip()]
    busy = parts / "gpu_busy_caption.txt"
    if busy.exists():
        samples = [float(line) for line in busy.read_text().split() if line.strip().replace(".", "").isdigit()]
        result.setdefault("caption", {})["gpu_busy_share"] = statistics.mean(samples) / 100 if samples else None
    target = output or parts / "gpu_summary.json"
    # Written aside and renamed: a run killed while writing keeps the previous summary whole.
    staged = target.with_name(f".{target.name}.partial")
    staged.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    staged.replace(target)
    return result


def _json_part(path: Path) -> Any:
    """``path``'s JSON; None when missing or empty (the step failed before writing), its error when not JSON."""
    if not path.exists() or not path.stat().st_size:
        return None
    return _json_line(path.read_text(encoding="utf-8", errors="replace"), path.name)


def _json_line(text: str, name: str = "line") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return {"error": f"{name}: not JSON (the step failed or was cut short): {error}", "text": text[-200:]}


def _steps(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.count("\t") == 2]
    # A step the time budget left out (see gpu_steps.sh) has no exit code: it did not run.
    return [
        {"step": name, "exit": None if code == "skipped" else int(code), "seconds": float(seconds)}
        | ({"skipped": True} if code == "skipped" else {})
        for name, code, seconds in rows
    ]


def _benchmark_row(name: str, found: dict[str, Any]) -> dict[str, Any]:
    if "error" in found:
        return {"file": name, "error": found["error"]}
    ours, theirs = found.get("captionkit", {}), found.get("transformers_generate", {})
    return {
        "file": name,
        "dtype": found.get("dtype"),
        "batch_size": found.get("batch_size"),
        "captionkit_images_per_s": ours.get("images_per_s"),
        "generate_images_per_s": theirs.get("images_per_s"),
        "speedup": found.get("speedup"),
        "speedup_spread": found.get("speedup_spread"),
        "captionkit_peak_gpu_mb": ours.get("peak_gpu_mb"),
        "generate_peak_gpu_mb": theirs.get("peak_gpu_mb"),
        "captions_equal_to_fp32": found.get("captions_equal_to_fp32"),
        "captions_identical_to_generate": found.get("captions_identical"),
        "fraction_of_compute_limit": ours.get("fraction_of_compute_limit"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env")
    model = commands.add_parser("save-model")
    model.add_argument("directory", type=Path)
    model.add_argument("--preset", default="base")
    model.add_argument("--captions", type=Path, required=True)
    model.add_argument("--vocab-size", type=int, default=8000)
    photos = commands.add_parser("photos")
    photos.add_argument("source", type=Path)
    photos.add_argument("target", type=Path)
    photos.add_argument("--count", type=int, default=3000)
    recipe = commands.add_parser("recipe")
    recipe.add_argument("path", type=Path)
    recipe.add_argument("--preset", default="base")
    recipe.add_argument("--data", type=Path, required=True)
    recipe.add_argument("--batch-size", type=int, default=64)
    recipe.add_argument("--precision", default="bf16")
    recipe.add_argument("--steps", type=int, default=40)
    resume = commands.add_parser("resume-check")
    resume.add_argument("output", type=Path)
    resume.add_argument("--device", default="cuda")
    resume.add_argument("--preset", default="base")
    resume.add_argument("--steps", type=int, default=8)
    resume.add_argument("--batch-size", type=int, default=32)
    resume.add_argument("--deterministic", action="store_true")
    done = commands.add_parser("summary")
    done.add_argument("parts", type=Path)
    done.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.command == "env":
        print(json.dumps(environment(), indent=2))
    elif args.command == "save-model":
        save_model(args.directory, args.preset, args.captions, args.vocab_size)
    elif args.command == "photos":
        replicate_photos(args.source, args.target, args.count)
    elif args.command == "recipe":
        write_recipe(args.path, args.preset, args.data, args.batch_size, args.precision, args.steps)
    elif args.command == "resume-check":
        with tempfile.TemporaryDirectory() as work:
            found = resume_check(Path(work), args.device, args.preset, args.steps, args.batch_size, args.deterministic)
        args.output.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(found, indent=2))
    else:
        print(json.dumps(summary(args.parts, args.output), indent=2))


if __name__ == "__main__":
    main()
