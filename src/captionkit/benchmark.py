"""Inference benchmark: captionkit's decoding engine against transformers' ``generate``, side by side in one run.

Both decode the same pixels with the same model (vit-gpt2, BLIP or GIT), alternating batch by batch so that load on a
shared machine hits both alike. Every caption is forced to exactly ``max_new_tokens`` tokens in both
(``min_new_tokens = max_new_tokens``: eos is masked until the limit, transformers' ``MinNewTokensLengthLogitsProcessor``
and captionkit's ``DecodingConfig.min_new_tokens``), so both do the same amount of work whatever the weights.

The result also says how close each comes to the machine's compute limit: the arithmetic the task needs (encoder,
cross-attention keys/values once per image, then one decoder step per row and token) divided by a measured matmul
rate in the benchmark's dtype on its device. On a GPU it adds each engine's peak GPU memory; in bf16/fp16 the share
of captions equal to the fp32 model's.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import re
import resource
import signal
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captionkit.cpus import usable_cpus
from captionkit.decoding import DEFAULT_BEAMS, DecodingConfig, check_length, generate
from captionkit.devices import resolve_device
from captionkit.errors import InputError
from captionkit.models.base import CaptionModel
from captionkit.models.gpt2_graph import eager_steps, release_graphs
from captionkit.models.packed_linear import packing_enabled
from captionkit.models.registry import get_family, hub_layout_families
from captionkit.precision import dtype_name, model_dtype, resolve_dtype

FORCED_LENGTH_NOTE = (
    "min_new_tokens = max_new_tokens in both captionkit and transformers generate: eos is masked until the limit, "
    "so every caption has exactly max_new_tokens tokens and both do the same work"
)


@dataclass(frozen=True)
class BenchmarkSettings:
    """What to measure; ``model`` (a checkpoint) or ``preset`` (random weights, no download), not both."""

    model: str | None = None
    preset: str | None = None
    batch_size: int = 8
    beams: int = DEFAULT_BEAMS
    max_length: int = 20
    images: Path | None = None
    repeats: int = 3
    threads: int | None = None
    device: str = "cpu"
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if (self.model is None) == (self.preset is None):
            raise InputError("--model/--preset", "give exactly one: a checkpoint to load or a preset to build")
        for name, low in (("batch_size", 1), ("beams", 1), ("max_length", 1), ("repeats", 1)):
            if getattr(self, name) < low:
                raise InputError(f"--{name.replace('_', '-')}", f"must be at least {low}, got {getattr(self, name)}")
        cpus = usable_cpus()
        if self.threads is not None and not 1 <= self.threads <= cpus:
            # More threads than CPUs time the oversubscription, not the engines (and a few thousand crash OpenMP).
            reason = f"must be in [1, {cpus}] (the CPUs this process may use), got {self.threads}"
            raise InputError("--threads", reason)
        resolve_dtype(self.dtype, resolve_device(self.device, "--device"), "--dtype")


def run_benchmark(settings: BenchmarkSettings, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure both engines; returns the JSON-ready result (its fields: README, "Speed, int8 and ONNX")."""
    say = progress or (lambda _message: None)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    model, pixels, source = _model_and_pixels(settings)
    if _transformers_model(model) is None:
        *others, last = hub_layout_families()
        needs = f"{', '.join(others)} or {last}"
        reason = f"{settings.model} is a {model.family} model; the comparison with generate needs {needs}"
        raise InputError("--model", reason + _instead(model))
    config = _config(settings)
    try:
        check_length(model, config)
    except InputError as error:  # named by the command's flag, before any decoding starts
        raise InputError("--max-length", error.reason) from None
    with eager_steps():  # under CAPTIONKIT_CUDA_GRAPHS=compile, not a second compilation (minutes) for fp32
        fp32_captions = _captions(model, pixels, config)
    dtype = resolve_dtype(settings.dtype, pixels.device)
    model.to(dtype)

    def ours() -> list[list[int]]:
        return _captions(model, pixels, config)

    def reference() -> list[list[int]]:
        return _generate_reference(model, pixels, settings)

    say("warming up")
    peaks: Mapping[str, tuple[int | None, int | None]]  # (peak resident memory, peak GPU memory); one is measured
    if pixels.device.type == "cuda":
        ours_captions, reference_captions, peaks = _peaks_on_gpu(model, ours, reference)
    else:
        ours_captions, reference_captions = ours(), reference()
        say("peak memory: one batch per engine, each in a fresh process")
        peaks = {name: _peaks_in_child(settings, name) for name in ("captionkit", "transformers_generate")}
    timings: dict[str, list[float]] = {"captionkit": [], "transformers_generate": []}
    cpu_times: dict[str, list[float]] = {"captionkit": [], "transformers_generate": []}
    engines_in_turn = (("captionkit", ours), ("transformers_generate", reference))
    for repeat in range(settings.repeats):
        # Each engine goes first in every other repeat: whatever the second one gains or loses from running right
        # after the other (caches, clocks) falls on both alike.
        for name, run in engines_in_turn if repeat % 2 == 0 else engines_in_turn[::-1]:
            say(f"repeat {repeat + 1}/{settings.repeats}: {name}")
            start, cpu_start = time.perf_counter(), time.process_time()
            run()
            _synchronize(pixels.device)
            timings[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    matmul_rate = measure_matmul_gflops(device=pixels.device, dtype=dtype)
    flops = estimate_flops(model, settings.batch_size, settings.beams, settings.max_length)
    limit_s = flops["total_gflop"] / matmul_rate
    engines = {
        name: _engine_figures(timings[name], cpu_times[name], settings.batch_size, *peaks[name], limit_s)
        for name in timings
    }
    agree = sum(a == b for a, b in zip(ours_captions, reference_captions, strict=True))
    ratios = [t / o for t, o in zip(timings["transformers_generate"], timings["captionkit"], strict=True)]
    return {
        "model": settings.model or f"preset:{settings.preset} (random weights)",
        "inputs": source,
        "batch_size": settings.batch_size,
        "beams": settings.beams,
        "max_new_tokens": settings.max_length,
        "repeats": settings.repeats,
        "device": str(pixels.device),
        "dtype": dtype_name(dtype),
        "torch_threads": torch.get_num_threads(),
        # CAPTIONKIT_PACKED_LINEAR=0 turns off captionkit's prepacked oneDNN weights (CPU): runs with and without it
        # differ in speed and memory, and the figures alone would not say which this was.
        "packed_linear": packing_enabled(),
        "forced_length": FORCED_LENGTH_NOTE,
        "captionkit": engines["captionkit"],
        "transformers_generate": engines["transformers_generate"],
        "speedup": statistics.median(timings["transformers_generate"]) / statistics.median(timings["captionkit"]),
        # Each repeat's own ratio: how steady the speedup is.
        "speedup_spread": {"min": min(ratios), "max": max(ratios)},
        # CPU seconds (all threads) are steadier than wall time on a shared machine.
        "speedup_cpu_time": statistics.median(cpu_times["transformers_generate"])
        / statistics.median(cpu_times["captionkit"]),
        "captions_identical": agree == len(ours_captions),
        "caption_agreement": agree / len(ours_captions),
        "captions_equal_to_fp32": sum(a == b for a, b in zip(ours_captions, fp32_captions, strict=True))
        / len(ours_captions),
        "compute": {
            **flops,
            "matmul_gflops": matmul_rate,
            "limit_s_per_batch": limit_s,
        },
        "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
    }


def _config(settings: BenchmarkSettings) -> DecodingConfig:
    return DecodingConfig(
        max_new_tokens=settings.max_length, min_new_tokens=settings.max_length, num_beams=settings.beams
    )


def _captions(model: CaptionModel, pixels: torch.Tensor, config: DecodingConfig) -> list[list[int]]:
    return [found[0].token_ids for found in generate(model, pixels, config=config)]


def _peaks_on_gpu(
    model: CaptionModel, ours: Callable[[], list[list[int]]], reference: Callable[[], list[list[int]]]
) -> tuple[list[list[int]], list[list[int]], dict[str, tuple[None, int]]]:
    """Each engine's captions and peak GPU memory, both in this process: the allocator's peak, reset before each.

    What captionkit keeps between calls (CUDA graphs' buffers, ``CAPTIONKIT_CUDA_GRAPHS``) would count in whatever
    runs after it: those of the fp32 run are freed, ``generate`` goes first, and captionkit's peak holds its own.
    """
    release_graphs(model)
    reference_captions, peak_reference = _gpu_peak(reference)
    ours_captions, peak_ours = _gpu_peak(ours)
    return (
        ours_captions,
        reference_captions,
        {"captionkit": (None, peak_ours), "transformers_generate": (None, peak_reference)},
    )


def _gpu_peak(run: Callable[[], list[list[int]]]) -> tuple[list[list[int]], int]:
    """``run()``'s captions and the peak GPU memory allocated while it ran."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    captions = run()
    torch.cuda.synchronize()
    return captions, torch.cuda.max_memory_allocated()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_and_pixels(settings: BenchmarkSettings) -> tuple[CaptionModel, torch.Tensor, str]:
    """The fp32 model and pixels on the benchmark's device, and what the pixels are."""
    model, pixels, source = _model_and_cpu_pixels(settings)
    device = torch.device(settings.device)
    return model.to(device), pixels.to(device), source


def _model_and_cpu_pixels(settings: BenchmarkSettings) -> tuple[CaptionModel, torch.Tensor, str]:
    from captionkit.images import Preprocessing, load_image

    if settings.preset is not None:
        from captionkit.models.vit_gpt2 import PRESETS, VitGpt2Model

        if settings.preset not in PRESETS:
            raise InputError("--preset", f"unknown preset {settings.preset!r} (known: {', '.join(PRESETS)})")
        torch.manual_seed(0)
        last = PRESETS[settings.preset].vocab_size - 1  # GPT-2's layout: one id for bos, eos and pad
        vit_gpt2 = VitGpt2Model.from_config(settings.preset, bos_token_id=last, eos_token_id=last, pad_token_id=last)
        side = vit_gpt2.config.image_size
        model: CaptionModel = vit_gpt2
        preprocessing = Preprocessing.for_size(side, side)
    else:
        from captionkit.api import Captioner

        captioner = Captioner.from_pretrained(settings.model, device="cpu")  # type: ignore[arg-type]
        model, preprocessing = captioner.model, captioner.preprocessing
    model.eval()
    if settings.images is None:
        size = preprocessing.size
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randn(settings.batch_size, 3, *size, generator=generator).clamp(-1, 1)
        return model, pixels, "random pixels (seed 0)"
    from captionkit.jobs.inputs import collect_images

    paths = collect_images([settings.images])
    if not paths:
        raise InputError(settings.images, "no images found")
    chosen = [paths[i % len(paths)] for i in range(settings.batch_size)]  # repeat a short folder to fill the batch
    pixels = torch.from_numpy(preprocessing([load_image(path) for path in chosen]))
    count = len(set(chosen))
    return model, pixels, f"{count} image{'' if count == 1 else 's'} from {settings.images}"


def _generate_reference(model: CaptionModel, pixels: torch.Tensor, settings: BenchmarkSettings) -> list[list[int]]:
    """transformers' generate with the same settings; captions without the start token."""
    with torch.inference_mode():
        rows = (
            _transformers_model(model)
            .generate(
                pixel_values=pixels.to(model_dtype(model)),
                max_new_tokens=settings.max_length,
                min_new_tokens=settings.max_length,
                num_beams=settings.beams,
                do_sample=False,
                length_penalty=1.0,
                early_stopping=False,
                num_return_sequences=1,
            )
            .tolist()
        )
    eos = model.eos_token_id
    return [row[1 : row.index(eos, 1)] if eos in row[1:] else row[1:] for row in rows]


def _instead(model: CaptionModel) -> str:
    """What times a model ``generate`` cannot run, where something does: the ONNX benchmark script, which exports
    the checkpoint itself (it takes no export) and compares onnxruntime with PyTorch."""
    from captionkit.export.onnx import OnnxCaptionModel

    if not isinstance(model, OnnxCaptionModel):
        return ""
    return (
        "; to time an ONNX export against PyTorch, run benchmarks/bench_onnx.py --model CHECKPOINT, with the "
        "checkpoint it was exported from"
    )


def _transformers_model(model: CaptionModel) -> Any:
    """The transformers model a family wraps (vit-gpt2's ``ved``, BLIP's and GIT's ``hf``), or None."""
    for name in ("ved", "hf"):
        if hasattr(model, name):
            return getattr(model, name)
    return None


def _engine_figures(
    times: list[float], cpu_times: list[float], batch: int, peak: int | None, peak_gpu: int | None, limit_s: float
) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "images_per_s": batch / median,
        "latency_p50_s": median,
        "latency_p95_s": _percentile(times, 0.95),
        "batch_times_s": times,
        "cpu_s_p50": statistics.median(cpu_times),
        "peak_rss_mb": None if peak is None else peak / 2**20,
        "peak_gpu_mb": None if peak_gpu is None else peak_gpu / 2**20,
        "fraction_of_compute_limit": limit_s / median,
    }


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _peaks_in_child(settings: BenchmarkSettings, engine: str) -> tuple[int | None, None]:
    """Peak resident memory of a fresh process that loads the model and decodes one batch with ``engine`` (CPU runs;
    the second value, peak GPU memory, is None).

    A process of its own per engine: in a shared process the second engine's peak would include what the first
    left behind (allocator caches, captionkit's packed weights), and neither peak would be the engine's own.
    """
    with _pool_deaf_to_ctrl_c() as pool:
        return pool.apply(_decode_once_and_report_peaks, (settings, engine))


def _pool_deaf_to_ctrl_c() -> multiprocessing.pool.Pool:
    """A one-process spawn pool whose process ignores SIGINT: Ctrl-C at a terminal reaches the whole process group,
    and the child's own KeyboardInterrupt printed "Process SpawnPoolWorker-1:" and a traceback beside the command's
    one line. The command alone answers Ctrl-C; leaving the ``with`` block terminates the child.

    The child is started while this process ignores SIGINT, so that it ignores it from its first instruction (an
    ignored signal stays ignored across exec, and Python then installs no handler of its own)."""
    context = multiprocessing.get_context("spawn")
    if threading.current_thread() is not threading.main_thread():  # only the main thread may change handlers
        return context.Pool(1)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return context.Pool(1)
    finally:
        signal.signal(signal.SIGINT, previous)


def _decode_once_and_report_peaks(settings: BenchmarkSettings, engine: str) -> tuple[int | None, None]:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a fresh process: the command's quiet settings did not come with it
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    model, pixels, _source = _model_and_pixels(settings)
    model.to(resolve_dtype(settings.dtype, pixels.device))
    if engine == "captionkit":
        _captions(model, pixels, _config(settings))
    else:
        _generate_reference(model, pixels, settings)
    return _peak_rss_bytes(), None


def _peak_rss_bytes() -> int | None:
    """This process's peak resident memory (Linux VmHWM, else getrusage's ru_maxrss)."""
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        found = None
    if found:
        return int(found.group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_matmul_gflops(
    size: int | None = None, repeats: int = 5, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> float:
    """The matmul rate (best of ``repeats`` square matmuls) of ``device`` (default: the CPU, with torch's current
    threads) in ``dtype``; ``size`` defaults to 1024 on a CPU and 8192 on a GPU (which small matmuls cannot fill)."""
    device = device or torch.device("cpu")
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


@dataclass(frozen=True)
class _Shape:
    """What the FLOP count needs of a captioner: a ViT encoder, and a transformer decoder that reads its tokens
    through cross-attention (vit-gpt2, BLIP) or as a prefix in its self-attention (GIT)."""

    patches: int
    channels: int
    patch_size: int
    encoder_width: int
    encoder_inner: int
    encoder_layers: int
    width: int
    inner: int
    layers: int
    vocab: int
    # The image tokens are projected to the decoder width (vit-gpt2 when the widths differ, GIT always).
    projection: bool
    prefix: bool


def _shape(config: Any) -> _Shape:
    patches = (config.image_size // config.patch_size) ** 2
    if hasattr(config, "encoder_hidden_size"):  # vit-gpt2: enc_to_dec_proj when the widths differ
        width = config.decoder_hidden_size
        return _Shape(
            patches,
            config.num_channels,
            config.patch_size,
            config.encoder_hidden_size,
            config.encoder_intermediate_size,
            config.encoder_layers,
            width,
            config.decoder_intermediate_size or 4 * width,
            config.decoder_layers,
            config.vocab_size,
            config.encoder_hidden_size != width,
            False,
        )
    # GIT projects the image tokens to the text width and reads them as a prefix; BLIP cross-attends to them.
    prefix = get_family(config.family).image_prefix
    return _Shape(
        patches,
        3,
        config.patch_size,
        config.vision_hidden_size,
        config.vision_intermediate_size,
        config.vision_layers,
        config.text_hidden_size,
        config.text_intermediate_size,
        config.text_layers,
        config.vocab_size,
        prefix,
        prefix,
    )


def estimate_flops(model: CaptionModel, batch: int, beams: int, new_tokens: int) -> dict[str, float]:
    """GFLOPs a ViT + transformer decoder needs for one batch: encoder, image-side decoder work once per image,
    decoder steps.

    The image-side work (``cross_keys_values_gflop``) is the cross-attention keys/values (vit-gpt2, BLIP) or, for
    GIT, the image prefix's pass through the decoder layers. Matmuls and attention only (2 FLOPs per multiply-add);
    layer norms, softmax and activations are ignored. Step 0 feeds the start token once per image; steps
    1 .. new_tokens - 1 feed ``batch * beams`` rows.
    """
    shape = _shape(model.config)  # type: ignore[attr-defined]
    tokens, width, dim, inner = shape.patches + 1, shape.encoder_width, shape.width, shape.inner
    encoder_layer = 2 * tokens * width * (4 * width + 2 * shape.encoder_inner) + 4 * tokens**2 * width
    patch_embedding = 2 * shape.patches * shape.channels * shape.patch_size**2 * width
    encoder = batch * (shape.encoder_layers * encoder_layer + patch_embedding)
    memory_width = dim if shape.projection else width
    if shape.projection:
        encoder += batch * 2 * tokens * width * dim
    if shape.prefix:  # the image tokens through every decoder layer, attending to each other
        image_side = batch * shape.layers * (2 * tokens * dim * (4 * dim + 2 * inner) + 4 * tokens**2 * dim)
    else:
        image_side = batch * shape.layers * 2 * tokens * memory_width * 2 * dim
    # Per row and layer: q,k,v,o (+ cross q,o) + MLP, then attention over the cached text and the image tokens.
    projections = 2 * dim * ((4 if shape.prefix else 6) * dim + 2 * inner)
    decoder = 0
    for position in range(new_tokens):
        rows = batch if position == 0 else batch * beams
        per_layer = projections + 4 * dim * (position + 1 + tokens)
        decoder += rows * (shape.layers * per_layer + 2 * dim * shape.vocab)
    return {
        "encoder_gflop": encoder / 1e9,
        "cross_keys_values_gflop": image_side / 1e9,
        "decoder_steps_gflop": decoder / 1e9,
        "total_gflop": (encoder + image_side + decoder) / 1e9,
    }


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def format_table(result: dict[str, Any]) -> str:
    """A human summary of :func:`run_benchmark`'s result."""
    threads = f"{result['torch_threads']} thread{'' if result['torch_threads'] == 1 else 's'}"
    unpacked = "" if result["packed_linear"] else ", CAPTIONKIT_PACKED_LINEAR=0"
    lines = [
        f"model {result['model']}, batch {result['batch_size']}, beams {result['beams']}, "
        f"{result['max_new_tokens']} tokens, {result['device']} {result['dtype']}, {threads}, "
        f"{result['inputs']}{unpacked}",
        f"{'engine':<22} {'images/s':>9} {'p50 s':>8} {'p95 s':>8} {'peak RSS MB':>12} {'peak GPU MB':>12} "
        f"{'of limit':>9}",
    ]
    for name in ("captionkit", "transformers_generate"):
        row = result[name]
        rss, gpu = (("n/a" if row[key] is None else f"{row[key]:.0f}") for key in ("peak_rss_mb", "peak_gpu_mb"))
        lines.append(
            f"{name:<22} {row['images_per_s']:>9.3f} {row['latency_p50_s']:>8.3f} {row['latency_p95_s']:>8.3f} "
            f"{rss:>12} {gpu:>12} {row['fraction_of_compute_limit']:>8.1%}"
        )
    compute = result["compute"]
    lines.append(
        f"speedup {result['speedup']:.2f}x (repeats {result['speedup_spread']['min']:.2f}-"
        f"{result['speedup_spread']['max']:.2f}x, CPU time {result['speedup_cpu_time']:.2f}x), "
        f"captions identical: {result['captions_identical']} ({result['caption_agreement']:.0%}); "
        f"compute limit {compute['limit_s_per_batch']:.3f} s/batch "
        f"({compute['total_gflop']:.1f} GFLOP at {compute['matmul_gflops']:.1f} GFLOP/s matmul)"
    )
    return "\n".join(lines)
