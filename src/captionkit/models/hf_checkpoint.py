"""What the families that wrap a whole Hugging Face captioner (BLIP, GIT) share: loading a hub-layout directory
safely, saving it back with captionkit's metadata, and a decoder state on transformers' own KV cache.

The wrapped model is kept as ``.hf``; its ``config.json`` carries captionkit's metadata under ``"captionkit"``
(transformers keeps unknown keys through save and load), so a saved run loads with plain ``transformers`` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import Cache, PreTrainedModel
from transformers.utils import logging as hf_logging

from captionkit.errors import ModelLoadError, first_line
from captionkit.hub import resolve_model_source
from captionkit.models.config_file import read_config_json
from captionkit.models.native import METADATA_KEY
from captionkit.version import __version__

SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def load_hub_model(model_class: type[PreTrainedModel], model_type: str, name_or_dir: str | Path) -> PreTrainedModel:
    """``model_class`` from a hub id or hub-layout directory, in eval mode: safetensors only, never remote code.

    A missing or mismatched tensor is an error: it would silently stay random.
    """
    source = str(name_or_dir)
    path = resolve_model_source(name_or_dir)
    raw = read_config_json(path, source)
    if raw.get("model_type") != model_type:
        raise ModelLoadError(source, f"model_type is {raw.get('model_type')!r}; expected {model_type!r}")
    architectures = raw.get("architectures") or [model_class.__name__]
    if model_class.__name__ not in architectures:
        # e.g. BlipForQuestionAnswering: the same model_type, another head; it would load, then caption nonsense.
        raise ModelLoadError(
            source, f"is a {', '.join(map(str, architectures))}; captioning needs {model_class.__name__}"
        )
    return load_safetensors_model(model_class, path, source)


def load_safetensors_model(
    model_class: Any, path: Path, source: str, *, may_lack: tuple[str, ...] = (), report: bool = True, **options: Any
) -> PreTrainedModel:
    """``model_class.from_pretrained(path, **options)`` in eval mode: local files, safetensors only, no remote code.

    Every failure is one :class:`ModelLoadError` line, and so is a tensor the weights lack (it would silently stay
    random) unless its name holds one of ``may_lack``: layers a model adds new or never uses. ``report=False``
    silences transformers' load report, which would list those as problems.
    """
    if not any((path / name).is_file() for name in SAFE_WEIGHT_FILES):
        raise ModelLoadError(source, "no model.safetensors: only safetensors weights are loaded, never pickles")
    previous = hf_logging.get_verbosity()
    if not report:
        hf_logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(
            path, use_safetensors=True, output_loading_info=True, local_files_only=True, **options
        )
    except RuntimeError as error:
        if "mismatch" not in str(error):
            raise ModelLoadError(source, first_line(error)) from None
        # transformers' load report names each tensor; its exception only mentions ignore_mismatched_sizes.
        seen = " (see the load report)" if report else ""
        raise ModelLoadError(source, f"weight shapes do not match config.json{seen}") from None
    except (OSError, ValueError, SafetensorError) as error:
        raise ModelLoadError(source, first_line(error)) from None
    finally:
        hf_logging.set_verbosity(previous)
    missing = [key for key in sorted(info["missing_keys"]) if not any(part in key for part in may_lack)]
    problems = missing or sorted(str(key) for key in info["mismatched_keys"])
    if problems:
        shown = ", ".join(problems[:3]) + (", ..." if len(problems) > 3 else "")
        raise ModelLoadError(source, f"weights do not match the config ({len(problems)} tensors: {shown})")
    return model.eval()


def save_hub_model(model: PreTrainedModel, family: str, directory: str | Path) -> None:
    """config.json (with the "captionkit" key), generation_config.json and model.safetensors, as the hub has them."""
    model.config.update({METADATA_KEY: {"family": family, "captionkit_version": __version__}})
    model.save_pretrained(directory)


@dataclass
class CachedState:
    """Decoder state on transformers' KV cache: ``cache`` is None before the first step; ``memory`` holds each
    row's encoder tokens for a decoder that cross-attends to them (None for one that keeps them in its cache)."""

    cache: Cache | None
    memory: torch.Tensor | None
    length: int = 0

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder_cache(index)
        if self.memory is not None:
            self.memory = self.memory.index_select(0, index)
