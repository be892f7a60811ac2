"""Exports of a trained captioner: int8 dynamic quantization (``int8``) and ONNX graphs (``onnx``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from captionkit.errors import InputError
from captionkit.parts import EXPORT_MARKERS, CaptionerParts
from captionkit.quiet import no_transformers_progress_bars
from captionkit.trained_on import TRAIN_CONFIG

# The files of a model checkpoint that an export would write over.
CHECKPOINT_FILES = ("config.json", "model.safetensors")


def is_model_being_exported(source: str | Path, output: str | Path) -> bool:
    """Whether ``output`` is the directory ``source`` names (a directory path; a hub id is never a local output).
    Light (no model is loaded): the CLI asks it before loading, :func:`check_export_output` after."""
    source, output = Path(source), Path(output)
    return source.is_dir() and source.resolve() == output.resolve()


def is_export_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an int8 or ONNX export (its marker file); light, loads nothing."""
    directory = Path(path)
    return any((directory / marker).is_file() for marker in EXPORT_MARKERS)


def check_export_output(source: Path, output: Path, marker: str) -> None:
    """Refuse an ``output`` that would spoil a model: the checkpoint being exported (int8 deletes its fp32 weights;
    either marker turns it into an export, which training refuses), or another kind of export, whose marker would
    still decide how the directory loads (ONNX before int8), or another model's checkpoint. The CLI refuses any
    non-empty directory beforehand."""
    if is_model_being_exported(source, output):
        raise InputError(output, "is the model being exported; choose a new directory")
    if output.exists() and not output.is_dir():
        raise InputError(output, "is a file, not a directory")
    for other, kind in EXPORT_MARKERS.items():
        if other != marker and (output / other).is_file():
            raise InputError(output, f"holds {kind} ({other}); export into a new or empty directory")
    # Another checkpoint: an int8 export would replace its config and delete its weights, an ONNX one bury them.
    # (An export of the same kind may be written again: its marker says so.)
    held = next((name for name in CHECKPOINT_FILES if (output / name).is_file()), None)
    if held is not None and not (output / marker).is_file():
        raise InputError(output, f"holds a model ({held}); export into a new or empty directory")


def keep_training_settings(source: Path, output: Path) -> None:
    """Copy the training run's settings (``train_config.json``, where the checkpoint has them) into an export or a
    copy that ``Captioner.save_pretrained`` writes: they say which styles it writes (a run trained on positive and
    negative alone writes no neutral) and how its data was split, for ``evaluate``."""
    settings = source / TRAIN_CONFIG
    if settings.is_file():
        shutil.copyfile(settings, output / TRAIN_CONFIG)


def check_finite(model: Any, source: Path, why: str, error: type[InputError] = InputError) -> None:
    """Refuse a ``model`` (read from ``source``) with a parameter holding nan or inf, before any export is written:
    one line naming the parameter and ``why`` an export cannot take it."""
    import torch  # here: the checks above stay light

    for name, parameter in model.named_parameters():
        if parameter.is_floating_point() and not bool(torch.isfinite(parameter).all()):
            raise error(source, f"{name} holds nan or inf values, {why}")


def load_source(source: str | Path) -> CaptionerParts:
    """The checkpoint to export, read in fp32 whatever dtype its weights are stored in (a checkpoint saved in bf16 or
    fp16 wrote an int8 export that failed to load, and broke the ONNX exporter), without transformers' own progress
    bars (as every model load is)."""
    import torch  # here: the checks above stay light

    with no_transformers_progress_bars():
        return CaptionerParts.load(source, dtype=torch.float32)
