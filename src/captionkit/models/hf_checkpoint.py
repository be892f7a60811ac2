"""What the families that wrap a whole Hugging Face captioner (BLIP, GIT) share: their architecture fields (a ViT
and a BERT-style text decoder), loading a hub-layout directory safely, saving it back with captionkit's metadata,
and a decoder state on transformers' own KV cache.

The wrapped model is kept as ``.hf``; its ``config.json`` carries captionkit's metadata under ``"captionkit"``
(transformers keeps unknown keys through save and load), so a saved run loads with plain ``transformers`` too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import Cache, GenerationConfig, PreTrainedModel
from transformers.utils import GENERATION_CONFIG_NAME
from transformers.utils import logging as hf_logging

from captionkit.errors import ConfigError, ModelLoadError, first_line
from captionkit.hub import resolve_model_source
from captionkit.models.base import CaptionModel
from captionkit.models.config_file import read_config_json
from captionkit.models.native import METADATA_KEY, FamilyConfig, bad_config_reason, check_token_ids
from captionkit.version import __version__

SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class VisionTextConfig(FamilyConfig):
    """A ViT image encoder and a BERT-style text decoder: the fields BLIP and GIT share (defaults: ViT-B/16 and
    bert-base). A family's subclass sets its own defaults and maps the fields onto its transformers config."""

    image_size: int = 224
    patch_size: int = 16
    vision_hidden_size: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_intermediate_size: int = 3072
    text_hidden_size: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate_size: int = 3072
    text_positions: int = 512
    vocab_size: int = 30522

    def check(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError("patch_size", f"{self.patch_size} does not divide image_size {self.image_size}")
        for side in ("vision", "text"):
            hidden, heads = getattr(self, f"{side}_hidden_size"), getattr(self, f"{side}_heads")
            if hidden % heads:
                raise ConfigError(f"{side}_heads", f"{heads} heads do not divide {side}_hidden_size {hidden}")

    @classmethod
    def from_hf_parts(cls, vision: Any, text: Any) -> Self:
        """From transformers' vision config and the config holding the text decoder's sizes."""
        return cls(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            vision_hidden_size=vision.hidden_size,
            vision_layers=vision.num_hidden_layers,
            vision_heads=vision.num_attention_heads,
            vision_intermediate_size=vision.intermediate_size,
            text_hidden_size=text.hidden_size,
            text_layers=text.num_hidden_layers,
            text_heads=text.num_attention_heads,
            text_intermediate_size=text.intermediate_size,
            text_positions=text.max_position_embeddings,
            vocab_size=text.vocab_size,
        )

    def to_hf(self, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> Any:
        """transformers' config of the whole model, with these token ids."""
        raise NotImplementedError(f"{type(self).__name__} must define to_hf")

    def vision_hf(self) -> dict[str, int]:
        """The vision config's fields, as transformers names them."""
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_size": self.vision_hidden_size,
            "num_hidden_layers": self.vision_layers,
            "num_attention_heads": self.vision_heads,
            "intermediate_size": self.vision_intermediate_size,
        }

    def text_hf(self) -> dict[str, int]:
        """The text decoder's size fields, as transformers names them."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.text_hidden_size,
            "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads,
            "intermediate_size": self.text_intermediate_size,
            "max_position_embeddings": self.text_positions,
        }


def load_hub_model(
    model_class: type[PreTrainedModel], model_type: str, name_or_dir: str | Path, dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """``model_class`` from a hub id or hub-layout directory, in eval mode: safetensors only, never remote code; its
    weights in ``dtype`` as they load (None: transformers' default, the dtype they are stored in).

    A missing or mismatched tensor is an error: it would silently stay random.
    """
    source = str(name_or_dir)
    path = resolve_model_source(name_or_dir)
    _check_hub_config(model_class, model_type, path, source)
    return load_safetensors_model(model_class, path, source, **dtype_option(dtype))


def dtype_option(dtype: torch.dtype | None) -> dict[str, torch.dtype]:
    """transformers' ``from_pretrained`` option that builds the model in ``dtype`` and casts each stored tensor as
    it loads (``dtype``; ``torch_dtype`` is its deprecated name in transformers 5), or none for None."""
    return {} if dtype is None else {"dtype": dtype}


def build_hub_model(model_class: type[PreTrainedModel], model_type: str, directory: Path) -> PreTrainedModel:
    """``model_class`` of the architecture a hub-layout directory's config describes, its weights new (random)."""
    _check_hub_config(model_class, model_type, directory, str(directory))
    return build_hf_model(model_class, directory)


def build_hf_model(model_class: Any, directory: Path) -> PreTrainedModel:
    """``model_class`` from ``directory``'s config.json (and generation_config.json), in eval mode, weights new."""
    try:
        model = model_class(model_class.config_class.from_pretrained(directory))
        if (directory / GENERATION_CONFIG_NAME).is_file():
            model.generation_config = GenerationConfig.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise ModelLoadError(directory, first_line(error)) from None
    except StrictDataclassError as error:
        raise ModelLoadError(directory, bad_config_reason(error)) from None
    return model.eval()  # type: ignore[no-any-return]


def _check_hub_config(model_class: type[PreTrainedModel], model_type: str, path: Path, source: str) -> None:
    raw = read_config_json(path, source)
    if raw.get("model_type") != model_type:
        raise ModelLoadError(source, f"model_type is {raw.get('model_type')!r}; expected {model_type!r}")
    architectures = raw.get("architectures") or [model_class.__name__]
    if model_class.__name__ not in architectures:
        # e.g. BlipForQuestionAnswering: the same model_type, another head; it would load, then caption nonsense.
        raise ModelLoadError(
            source, f"is a {', '.join(map(str, architectures))}; captioning needs {model_class.__name__}"
        )


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
        # ignore_mismatched_sizes: a misshapen tensor then comes back in the loading info with both shapes (the
        # error transformers raises names neither); the model is refused below either way.
        model, info = model_class.from_pretrained(
            path,
            use_safetensors=True,
            output_loading_info=True,
            local_files_only=True,
            ignore_mismatched_sizes=True,
            **options,
        )
    except SafetensorError as error:  # a file cut short or not safetensors at all
        weights = _unreadable_weights_file(path)
        raise ModelLoadError(source, f"{weights}: unreadable weights ({first_line(error)})") from None
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(source, first_line(error)) from None
    except StrictDataclassError as error:
        raise ModelLoadError(source, bad_config_reason(error)) from None
    finally:
        hf_logging.set_verbosity(previous)
    _check_loaded_tensors(info, may_lack, source)
    return model.eval()


def _unreadable_weights_file(path: Path) -> str:
    """The weights file safetensors could not read: model.safetensors, or in a sharded checkpoint the first shard
    its index lists that does not open (safetensors' error names no file; the index itself is JSON, read fine)."""
    index = path / SAFE_WEIGHT_FILES[1]
    if not index.is_file():
        return SAFE_WEIGHT_FILES[0]
    for shard in _shard_names(index):
        try:
            # Opening reads and checks the header against the file's length: a shard cut short fails here.
            with safe_open(str(path / shard), framework="pt"):
                pass
        except (OSError, SafetensorError):
            return shard
    return index.name  # every shard opens: what failed cannot be told apart


def _shard_names(index: Path) -> list[str]:
    """The shard files ``model.safetensors.index.json`` maps tensors to, in order, each once."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        return sorted({str(name) for name in weight_map.values()})
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return []


def _check_loaded_tensors(info: dict[str, Any], may_lack: tuple[str, ...], source: str) -> None:
    """Refuse weights that lack a tensor the model needs, or hold one of another shape than config.json makes."""
    missing = [key for key in sorted(info["missing_keys"]) if not any(part in key for part in may_lack)]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ModelLoadError(source, f"weights do not match the config ({len(missing)} tensors: {shown})")
    mismatched = sorted(info["mismatched_keys"], key=lambda entry: str(entry[0]))
    if mismatched:
        name, stored, built = mismatched[0]
        raise ModelLoadError(
            source,
            f"weight shapes do not match config.json ({len(mismatched)} tensors; {name}: "
            f"{list(stored)} in the weights, {list(built)} by config.json)",
        )


def save_hub_model(model: PreTrainedModel, family: str, directory: str | Path) -> None:
    """config.json (with the "captionkit" key), generation_config.json and model.safetensors, as the hub has them."""
    model.config.update({METADATA_KEY: {"family": family, "captionkit_version": __version__}})
    model.save_pretrained(directory)


class HubCaptionModel(CaptionModel):
    """A transformers captioner kept whole as ``.hf`` and saved in its hub layout (BLIP, GIT): how such a family is
    built, loaded and saved. Subclasses set ``hf_class`` (e.g. ``GitForCausalLM``) and ``config_class``; their
    ``family`` is the hub config's ``model_type``."""

    hf_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[VisionTextConfig]]

    def __init__(self, hf: PreTrainedModel) -> None:
        super().__init__()
        self.hf = hf

    @classmethod
    def from_config(
        cls,
        config: VisionTextConfig | str,
        *,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int,
        **overrides: Any,
    ) -> Self:
        """A new model with random weights from a config or a preset name, with ``overrides`` applied."""
        resolved = cls.config_class.resolve(config, **overrides)
        token_ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
        check_token_ids(token_ids, resolved.vocab_size)
        return cls(cls.hf_class(resolved.to_hf(**token_ids)))

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, *, dtype: torch.dtype | None = None) -> Self:
        """A hub id or a directory in the hub layout (``hf_class``, safetensors), its weights loaded in ``dtype``
        (None: as stored)."""
        return cls(load_hub_model(cls.hf_class, cls.family, name_or_dir, dtype))

    @classmethod
    def from_saved_config(cls, directory: Path) -> Self:
        return cls(build_hub_model(cls.hf_class, cls.family, directory))

    def save_pretrained(self, directory: str | Path) -> None:
        save_hub_model(self.hf, self.family, directory)


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
