"""What the families built from parts (prefix-gpt2, cnn-lstm) share: typed configs and their checkpoint files.

A checkpoint directory holds ``config.json`` and ``model.safetensors``. ``config.json`` is captionkit's own::

    {"captionkit": {"family": "cnn-lstm", "captionkit_version": "0.1.0"},
     "config": {...architecture fields...}, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

Weights are safetensors only (tied tensors are stored once); a load checks every tensor name and shape against the
model the config builds, so a wrong file is one clear error instead of silently random weights. A load in another
dtype (bf16, fp16) builds the model in that dtype and casts the stored tensors one at a time as they are copied in:
neither the fp32 model nor the whole fp32 file is ever in memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_model
from torch import nn

from captionkit.errors import ConfigError, ModelLoadError, first_line
from captionkit.models.config_file import CONFIG_FILE, read_config_json
from captionkit.precision import default_dtype
from captionkit.version import __version__

METADATA_KEY = "captionkit"
WEIGHTS_FILE = "model.safetensors"
TOKEN_ID_NAMES = ("bos_token_id", "eos_token_id", "pad_token_id")


class FamilyConfig:
    """Mixin for a frozen dataclass of architecture fields: type checks, presets, dict round trips.

    Subclasses set ``family`` and ``presets`` (a mapping filled after the class is defined) and may add checks in
    ``check``. ``int`` fields must be at least 1 unless listed in ``may_be_zero``.
    """

    family: ClassVar[str]
    presets: ClassVar[Mapping[str, Any]]
    # What a saved config.json that lacks a field added since means: the architecture it was built with, so that
    # a model saved before the field existed loads as the model it was (a new model's default may differ).
    saved_defaults: ClassVar[Mapping[str, Any]] = {}
    may_be_zero: ClassVar[tuple[str, ...]] = ()
    choices: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            _check_type(item.name, value, hints[item.name])
            if hints[item.name] is float and type(value) is int:  # `--set ...=0` gives an int: not a count, kept 1.0
                value = float(value)
                object.__setattr__(self, item.name, value)
            if isinstance(value, list):  # JSON gives lists; equal configs must compare equal
                value = tuple(value)
                object.__setattr__(self, item.name, value)
            if isinstance(value, tuple):
                for index, entry in enumerate(value):
                    if entry < 1:
                        raise ConfigError(f"{item.name}[{index}]", f"must be at least 1, got {entry}")
            if type(value) is int and value < (0 if item.name in self.may_be_zero else 1):
                bound = 0 if item.name in self.may_be_zero else 1
                raise ConfigError(item.name, f"must be at least {bound}, got {value}")
            if item.name.endswith("dropout") and not 0.0 <= value < 1.0:
                raise ConfigError(item.name, f"must be in [0, 1), got {value}")
            if item.name in self.choices and value not in self.choices[item.name]:
                raise ConfigError(item.name, f"must be one of {', '.join(self.choices[item.name])}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Checks across fields; raise :class:`ConfigError`."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """Build from a mapping; unknown keys and wrong types raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in values:
            if key not in known:
                raise ConfigError(key, f"unknown {cls.family} config key (known: {', '.join(sorted(known))})")
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        if name not in cls.presets:
            raise ConfigError("preset", f"unknown {cls.family} preset {name!r} (known: {', '.join(cls.presets)})")
        return cls.presets[name].replace(**overrides)

    @classmethod
    def resolve(cls, config: Self | str, **overrides: Any) -> Self:
        """``config`` itself, or the preset it names, with ``overrides`` applied (each family's ``from_config``)."""
        if isinstance(config, str):
            return cls.from_preset(config, **overrides)
        return config.replace(**overrides) if overrides else config

    def replace(self, **overrides: Any) -> Self:
        return self.from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _check_type(name: str, value: Any, hint: Any) -> None:
    if typing.get_origin(hint) is tuple:  # tuple[int, ...]: a non-empty list of integers
        if isinstance(value, list | tuple) and value and all(type(v) is int for v in value):
            return
        raise ConfigError(name, f"expected a non-empty list of integers, got {value!r}")
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return
        # bool is an int subclass: `layers: true` in a recipe is a mistake, not 1.
        if option is bool and isinstance(value, bool):
            return
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if option is float and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return
        if option is str and isinstance(value, str):
            return
        if typing.get_origin(option) is dict and isinstance(value, dict):
            return
    expected = " | ".join("None" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(name, f"expected {expected}, got {type(value).__name__} {value!r}")


def check_token_ids(token_ids: Mapping[str, int], vocab_size: int) -> None:
    for name in TOKEN_ID_NAMES:
        token_id = token_ids[name]
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < vocab_size:
            raise ConfigError(name, f"must be a token id in [0, {vocab_size}), got {token_id!r}")


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


def save_native(
    model: nn.Module, family: str, config: FamilyConfig, token_ids: Mapping[str, int], directory: Path
) -> None:
    """Write ``config.json`` (with the captionkit metadata key) and ``model.safetensors`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        METADATA_KEY: {"family": family, "captionkit_version": __version__},
        "config": config.to_dict(),
        **{name: int(token_ids[name]) for name in TOKEN_ID_NAMES},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_model(model, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})


def read_native_config(directory: Path, family: str, source: str) -> tuple[dict[str, Any], dict[str, int]]:
    """(architecture fields, token ids) from ``config.json``, after checking it was saved as ``family``."""
    if not directory.is_dir():
        raise ModelLoadError(source, "no such directory")
    raw = read_config_json(directory, source)
    metadata = raw.get(METADATA_KEY)
    saved = metadata.get("family") if isinstance(metadata, dict) else None
    if saved != family:
        raise ModelLoadError(source, f"config.json names family {saved!r}, not {family!r}")
    fields, token_ids = raw.get("config"), {name: raw.get(name) for name in TOKEN_ID_NAMES}
    if not isinstance(fields, dict) or any(not isinstance(v, int) for v in token_ids.values()):
        raise ModelLoadError(directory / CONFIG_FILE, "needs a 'config' object and integer bos/eos/pad token ids")
    return fields, token_ids  # type: ignore[return-value]


def build_native(
    model_class: Any, config_class: type[FamilyConfig], directory: Path, source: str, dtype: torch.dtype | None = None
) -> Any:
    """``model_class`` of the architecture ``directory``'s config.json describes, its weights new (random), its
    floating-point tensors in ``dtype`` (None: torch's default, fp32)."""
    fields, token_ids = read_native_config(directory, model_class.family, source)
    try:
        with default_dtype(dtype):
            return model_class(config_class.from_dict({**config_class.saved_defaults, **fields}), **token_ids)
    except ConfigError as error:
        raise config_load_error(error, source) from None
    except ModelLoadError as error:  # a part it names (a timm / torchvision encoder) cannot be built here
        raise ModelLoadError(source, error.reason) from None
    except StrictDataclassError as error:  # a field of a transformers part it names (encoder_part, decoder_part)
        raise ModelLoadError(source, bad_config_reason(error)) from None


def load_native(
    model_class: Any, config_class: type[FamilyConfig], name_or_dir: str | Path, dtype: torch.dtype | None = None
) -> Any:
    """A saved ``model_class`` in eval mode, built in ``dtype`` (None: fp32) and filled from its weights."""
    directory, source = Path(name_or_dir), str(name_or_dir)
    model = build_native(model_class, config_class, directory, source, dtype)
    load_native_weights(model, directory, source)
    return model.eval()


def load_native_weights(model: nn.Module, directory: Path, source: str) -> None:
    """Fill ``model`` from ``model.safetensors``, each tensor cast to the dtype of the model's own as it is copied in;
    any missing, extra or misshapen tensor is a ModelLoadError."""
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(source, "no model.safetensors: only safetensors weights are loaded, never pickles")
    try:
        missing, unexpected = _copy_weights(model, weights)
    except _ShapeMismatch as error:
        raise ModelLoadError(source, f"weights do not match config.json ({error})") from None
    except (OSError, SafetensorError) as error:
        raise ModelLoadError(source, f"{WEIGHTS_FILE}: unreadable weights ({first_line(error)})") from None
    problems = sorted(missing) + sorted(unexpected)
    if problems:
        shown = ", ".join(problems[:3]) + (", ..." if len(problems) > 3 else "")
        raise ModelLoadError(source, f"weights do not match the config ({len(problems)} tensors: {shown})")


class _ShapeMismatch(Exception):
    """A stored tensor of another shape than the model's tensor of that name."""


def _copy_weights(model: nn.Module, weights: Path) -> tuple[set[str], list[str]]:
    """Copy every tensor of the safetensors file ``weights`` into ``model``'s tensor of that name, one at a time (the
    file's tensors are never all in memory at once; a copy casts to the model's dtype): (missing, unexpected) names,
    as safetensors' ``load_model`` reports them. Tensors the model ties together are stored once: such a group is
    filled from whichever of its names the file holds, and another of its names stored too is unexpected."""
    targets = model.state_dict()  # the model's own storage: copying into these fills the model
    with safe_open(str(weights), framework="pt") as file:
        stored = set(file.keys())
        for name in sorted(stored & targets.keys()):
            tensor = file.get_tensor(name)
            if tensor.shape != targets[name].shape:
                built = list(targets[name].shape)
                raise _ShapeMismatch(f"{name}: {list(tensor.shape)} in the weights, {built} by config.json")
            with torch.no_grad():
                targets[name].copy_(tensor)
            del tensor  # before the next one is read
    missing, unexpected = set(targets) - stored, sorted(stored - targets.keys())
    for group in _tied_groups(targets):
        present = sorted(group & stored)
        kept = present[0] if present else min(group)
        missing -= group - {kept}
        unexpected += present[1:]
    return missing, unexpected


def _tied_groups(state: Mapping[str, torch.Tensor]) -> list[set[str]]:
    """The names of each tensor stored under several names (the same storage), as safetensors groups them."""
    groups: defaultdict[tuple[torch.device, int, int], set[str]] = defaultdict(set)
    for name, tensor in state.items():
        storage = tensor.untyped_storage()
        if storage.data_ptr() != 0 and storage.nbytes() != 0:
            groups[(tensor.device, storage.data_ptr(), storage.nbytes())].add(name)
    return [names for names in groups.values() if len(names) > 1]


def config_load_error(error: ConfigError, source: str) -> ModelLoadError:
    """A bad field in a saved config.json, as a load error naming the checkpoint."""
    return ModelLoadError(source, f"bad config.json field {error.source}: {error.reason}")


def bad_config_reason(error: StrictDataclassError) -> str:
    """transformers 5's check of a config field (a wrong type in config.json), on one line: its message puts the
    field on one line and the cause on the next."""
    return "bad config.json: " + " ".join(line.strip() for line in str(error).splitlines())


def trains(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` takes a gradient (config flags freeze parts; training stages may not)."""
    return any(parameter.requires_grad for parameter in module.parameters())


def float_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """float32 next-token log-probabilities whatever the model's dtype (as transformers' generate does)."""
    return torch.log_softmax(logits.float(), dim=-1)
