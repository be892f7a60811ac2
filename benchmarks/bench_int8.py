"""int8 (dynamic quantization) against fp32 on real photos: caption agreement, token accuracy and speed, one run.

Exports ``--model`` with ``captionkit export int8`` into a temporary directory, loads both with
``Captioner.from_pretrained`` and captions the same photos with both (batches interleaved). Usage::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_int8.py --model DIR [--images DIR] [--count 64] \
        [--beams 4] [--threads 2] [--backend torchao|torch.ao]

Token accuracy: the fraction of positions (over the longer caption of each pair) where both have the same token.
``size_mb``: the weights on disk, the fp32 checkpoint's ``model.safetensors`` against the export's
``model.int8.safetensors``. With ``--speed-preset base`` it also times fp32 against int8 on a random-weight model of
that preset (greedy, 10 forced tokens): a small trained model is dominated by per-layer overhead, a large one by its
matmuls. With ``--size-preset base`` it also writes both weights files of a random-weight model of that preset.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _side_by_side import caption_side_by_side, photo_arguments, photo_paths, run_main, token_accuracy
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig, generate
from captionkit.export.int8 import export_int8, quantize_int8
from captionkit.export.int8_weights import INT8_WEIGHTS_FILE, save_int8_weights


def megabytes(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 2)


def weight_sizes(fp32: Path, int8: Path) -> dict[str, float]:
    """MB on disk of an fp32 checkpoint's weights and of its int8 export's, and their ratio."""
    sizes = {"fp32": megabytes(fp32 / "model.safetensors"), "int8": megabytes(int8 / INT8_WEIGHTS_FILE)}
    return sizes | {"int8_over_fp32": round(sizes["int8"] / sizes["fp32"], 3)}


def preset_sizes(preset: str) -> dict[str, object]:
    """The weights files of a random-weight vit-gpt2 preset, fp32 and int8 (as ``export int8`` writes them)."""
    from captionkit.models.vit_gpt2 import VitGpt2Model

    torch.manual_seed(0)
    model = VitGpt2Model.from_config(preset, bos_token_id=0, eos_token_id=0, pad_token_id=0).eval()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    with tempfile.TemporaryDirectory() as scratch:
        fp32, int8 = Path(scratch) / "fp32", Path(scratch) / "int8"
        model.save_pretrained(fp32)
        quantize_int8(model)
        int8.mkdir()
        save_int8_weights(model, int8 / INT8_WEIGHTS_FILE)
        return {"preset": preset, "parameters": parameters, "size_mb": weight_sizes(fp32, int8)}


def preset_speed(preset: str, backend: str | None, images: int = 4, repeats: int = 3) -> dict[str, object]:
    """fp32 and int8 seconds per batch (interleaved) on a random-weight vit-gpt2 preset."""
    from captionkit.models.vit_gpt2 import VitGpt2Model

    torch.manual_seed(0)
    fp32 = VitGpt2Model.from_config(preset, bos_token_id=0, eos_token_id=0, pad_token_id=0).eval()
    int8 = copy.deepcopy(fp32)
    info = quantize_int8(int8, backend)
    size = fp32.config.image_size
    pixels = torch.randn(images, 3, size, size).clamp(-1, 1)
    config = DecodingConfig(max_new_tokens=10, min_new_tokens=10)
    models = {"fp32": fp32, "int8": int8}
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        generate(model, pixels, config=config)
    for _ in range(repeats):
        for name, model in models.items():
            began = time.perf_counter()
            generate(model, pixels, config=config)
            times[name].append(time.perf_counter() - began)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "preset": preset,
        "backend": info["backend"],
        "median_batch_s": median,
        "int8_speedup": median["fp32"] / median["int8"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    photo_arguments(parser, beams=4)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--speed-preset", default=None, help="also time a random-weight preset (e.g. base)")
    parser.add_argument("--size-preset", default=None, help="also size a random-weight preset's weights (e.g. base)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        info = export_int8(args.model, Path(scratch) / "int8", args.backend)
        engines = {
            "fp32": Captioner.from_pretrained(args.model),
            "int8": Captioner.from_pretrained(Path(scratch) / "int8"),
        }
        # torchao's export keeps the fp32 weights (quantized on load): nothing smaller to weigh.
        sizes = weight_sizes(Path(args.model), Path(scratch) / "int8") if info["storage"] == "int8" else None
    config = DecodingConfig(num_beams=args.beams)
    paths = photo_paths(args.images, args.count)
    images = engines["fp32"].load_images(paths)
    captions, times = caption_side_by_side(engines, images, config, args.batch_size)
    pairs = list(zip(captions["fp32"], captions["int8"], strict=True))
    result = {
        "model": args.model,
        "images": f"{len(paths)} photos from {args.images}",
        "beams": args.beams,
        "threads": torch.get_num_threads(),
        "quantization": info,
        "size_mb": sizes,
        "caption_equality": sum(a == b for a, b in pairs) / len(pairs),
        "token_accuracy": token_accuracy(pairs),
        "images_per_s": {name: len(paths) / sum(values) for name, values in times.items()},
        "median_batch_s": {name: statistics.median(values) for name, values in times.items()},
        "int8_speedup": sum(times["fp32"]) / sum(times["int8"]),
    }
    if args.size_preset:
        result["random_weight_size"] = preset_sizes(args.size_preset)
    if args.speed_preset:
        result["random_weight_speed"] = preset_speed(args.speed_preset, args.backend)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_main("bench_int8", main)
