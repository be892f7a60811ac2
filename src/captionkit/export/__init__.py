"""Exports of a trained captioner: int8 dynamic quantization (``int8``) and ONNX graphs (``onnx``)."""

from __future__ import annotations

from pathlib import Path

from captionkit.errors import InputError
from captionkit.parts import ONNX_CONFIG, QUANTIZATION_FILE

EXPORT_MARKERS = {ONNX_CONFIG: "an ONNX export", QUANTIZATION_FILE: "an int8 export"}


def check_export_output(source: Path, output: Path, marker: str) -> None:
    """Refuse an ``output`` that would spoil a model: the checkpoint being exported (int8 deletes its fp32 weights;
    either marker turns it into an export, which training refuses), or another kind of export, whose marker would
    still decide how the directory loads (ONNX before int8). The CLI refuses any non-empty directory beforehand."""
    if output.resolve() == source.resolve():
        raise InputError(output, "is the model being exported; choose a new directory")
    for other, kind in EXPORT_MARKERS.items():
        if other != marker and (output / other).is_file():
            raise InputError(output, f"holds {kind} ({other}); export into a new or empty directory")
