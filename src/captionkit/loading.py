"""The one loader: any model directory or hub id -> its model, tokenizer and preprocessing.

Every caller that opens a saved model goes through :func:`load_pretrained`: the public API, the trainer (fine-tuning
a checkpoint, resuming a run), the exports. What a directory holds decides how it loads:

* ``onnx_config.json``: an ONNX export, decoded by onnxruntime (CPU);
* ``quantization.json``: an int8 export, quantized on load (its int8 kernels run on the CPU);
* otherwise a checkpoint of any registered family (``config.json`` names it; a Hugging Face VisionEncoderDecoder
  layout is vit-gpt2).

A hub id is fetched once as a local snapshot (failing in one line when offline) and then loaded like a directory.
This module sits above ``models/`` and ``export/`` because the export markers are theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captionkit.export.int8 import apply_saved_quantization, is_quantized
from captionkit.export.onnx import ONNX_CONFIG, OnnxCaptionModel
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel
from captionkit.models.registry import load_model
from captionkit.text import CaptionTokenizer


@dataclass
class Loaded:
    """A saved model with what it reads: its tokenizer and image preprocessing."""

    model: CaptionModel
    tokenizer: CaptionTokenizer
    preprocessing: Preprocessing
    # The local directory it came from (a hub id's snapshot).
    directory: Path
    # An int8 or ONNX export: its kernels run on the CPU only.
    cpu_only: bool


def load_pretrained(
    name_or_dir: str | Path, *, tokenizer: str | Path | None = None, onnx_threads: int | None = None
) -> Loaded:
    """Load ``name_or_dir`` (a directory or hub id); ``tokenizer`` names other tokenizer files to read instead of
    the model's own (the model's special ids are kept); ``onnx_threads`` sets onnxruntime's thread count."""
    directory = resolve_model_source(name_or_dir)
    onnx = (directory / ONNX_CONFIG).is_file()
    model: CaptionModel
    if onnx:
        model = OnnxCaptionModel(directory, onnx_threads)
    else:
        model = apply_saved_quantization(load_model(directory), directory)  # type: ignore[assignment]
    ids = (model.bos_token_id, model.eos_token_id, model.pad_token_id)
    words = CaptionTokenizer.load(directory if tokenizer is None else tokenizer, *ids)
    return Loaded(model, words, Preprocessing.load(directory), directory, onnx or is_quantized(directory))
