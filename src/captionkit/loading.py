"""The one loader: any model directory or hub id -> its model, tokenizer and preprocessing.

Every caller that opens a saved model goes through :func:`load_pretrained`: the public API, the trainer (fine-tuning
a checkpoint, resuming a run), the batch job and the server through the API. What a directory holds decides how it
loads:

* ``onnx_config.json``: an ONNX export, decoded by onnxruntime (CPU);
* ``quantization.json``: an int8 export, its int8 layers built from the stored int8 weights (or, for an export that
  kept fp32 weights, quantized on load); its int8 kernels run on the CPU;
* otherwise a checkpoint of any registered family (``config.json`` names it; a Hugging Face VisionEncoderDecoder,
  BLIP or GIT layout is recognised by its ``model_type``): :class:`captionkit.parts.CaptionerParts`, its weights read
  in the ``dtype`` asked for (bf16, fp16: never in fp32 first; :mod:`captionkit.precision`).

A hub id is fetched once as a local snapshot (failing in one line when offline) and then loaded like a directory.
This module sits above ``export/`` because the export markers are theirs; the exports themselves read plain
checkpoints through :mod:`captionkit.parts`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from captionkit.export.int8 import is_quantized, load_int8_model
from captionkit.export.onnx import ONNX_CONFIG, OnnxCaptionModel
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.parts import CaptionerParts, load_tokenizer
from captionkit.quiet import no_transformers_progress_bars

# One load at a time in a process: building a model flips process-wide switches (transformers' weight-init and
# progress-bar settings, torch's default dtype for a bf16 load), and two threads loading at once undid each other's:
# "weights do not match the config (1 tensors: decoder.lm_head.weight)" for a checkpoint that loads alone.
_LOADING = threading.RLock()


def load_pretrained(
    name_or_dir: str | Path,
    *,
    tokenizer: str | Path | None = None,
    onnx_threads: int | None = None,
    dtype: torch.dtype | None = None,
) -> CaptionerParts:
    """Load ``name_or_dir`` (a directory or hub id); ``tokenizer`` names other tokenizer files to read instead of
    the model's own (the model's special ids are kept); ``onnx_threads`` sets onnxruntime's thread count; ``dtype``
    (None: fp32, or a Hugging Face checkpoint's stored dtype) is the one a checkpoint's weights are built and read in.
    Exports load as they are stored whatever ``dtype`` says: the caller refuses a dtype they do not run in.

    transformers' own progress bars ("Loading weights") stay off meanwhile (:mod:`captionkit.quiet`). Loads from
    several threads run one after another."""
    with _LOADING, no_transformers_progress_bars():
        return _load(name_or_dir, tokenizer, onnx_threads, dtype)


def _load(
    name_or_dir: str | Path, tokenizer: str | Path | None, onnx_threads: int | None, dtype: torch.dtype | None
) -> CaptionerParts:
    directory = resolve_model_source(name_or_dir)
    if (directory / ONNX_CONFIG).is_file():
        model = OnnxCaptionModel(directory, onnx_threads)
        words = load_tokenizer(model, tokenizer or directory)
        preprocessing = model.preprocessing if model.preprocessing is not None else Preprocessing.load(directory)
        return CaptionerParts(model, words, preprocessing, directory, cpu_only=True, is_onnx=True)
    if is_quantized(directory):
        quantized = load_int8_model(directory)
        words = load_tokenizer(quantized, tokenizer or directory)
        return CaptionerParts(quantized, words, Preprocessing.load(directory), directory, cpu_only=True)
    return CaptionerParts.load(directory, tokenizer, dtype)
