"""timm and torchvision image classifiers as encoder parts (the optional extras ``timm`` and ``torchvision``).

How a recipe's ``model.encoder`` names one:

* ``timm:NAME``: a timm model (``timm:vit_base_patch16_224``, or with a tag, ``timm:resnet50.a1_in1k``); its weights
  are the hub repository timm's registry names for it (``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``);
* a hub id or a local directory in timm's hub layout: ``config.json`` with ``architecture`` and ``pretrained_cfg``
  (and ``model_args`` when the architecture was built with other arguments), ``model.safetensors``;
* ``torchvision:ARCH[.WEIGHTS][@FILE]``: a torchvision ResNet (resnet18 ... resnet152, resnext, wide_resnet) with
  the weights of its weights enum (DEFAULT unless ``WEIGHTS`` names an entry, e.g. ``IMAGENET1K_V1``), downloaded
  by torchvision, or read from a local state-dict ``FILE`` (safetensors, or a ``.pth`` read with ``weights_only``).

Each loads as a :class:`Backbone`: the classifier without its head, with ``feature_map`` (the last (B, C, h, w)
stage, for the LSTM's regions) and ``embedding`` (the pooled (B, C) features the head would read, for a prefix
mapper). Its preprocessing is its own eval transform's (timm's ``resolve_data_config``, torchvision's
``weights.transforms()``): input size, resize edge, centre crop rounded as torchvision's, interpolation, mean, std.
What rebuilds it without the network (:meth:`Backbone.part`) is saved in the run's config; its weights in the run's.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from captionkit.errors import ModelLoadError, first_line
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.models.config_file import read_config_json
from captionkit.models.native import WEIGHTS_FILE

TIMM, TORCHVISION = "timm", "torchvision"
LIBRARY_KEY = "library"
# timm's eval transform: the shorter edge to size / crop_pct (default 0.875), then the centre crop.
_TIMM_DEFAULT_CROP_PCT = 0.875
_TORCHVISION_FILE_SUFFIXES = (".safetensors", ".pth", ".pt")


def _install_hint(library: str) -> str:
    return f"needs {library}: pip install 'captionkit[{library}]'"


def _import(library: str, source: str) -> Any:
    """The library, or the one-line error naming the extra that installs it."""
    try:
        if library == TIMM:
            import timm

            return timm
        import torchvision.models

        return torchvision.models
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != library:
            raise ModelLoadError(source, f"{_install_hint(library)} ({first_line(error)})") from None
        raise ModelLoadError(source, _install_hint(library)) from None
    except (ImportError, RuntimeError) as error:  # a torchvision built for another torch fails at import
        raise ModelLoadError(source, f"{_install_hint(library)} (it does not import: {first_line(error)})") from None


class Backbone(nn.Module, ABC):
    """A classifier without its head (kept as ``.model``, so its tensors keep their names under ``model.``)."""

    library: ClassVar[str]

    def __init__(self, model: nn.Module, architecture: str, num_features: int, model_args: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.architecture, self.num_features, self.model_args = architecture, num_features, model_args

    def part(self) -> dict[str, Any]:
        """What :func:`build_backbone` rebuilds it from (random weights, no network): saved in a run's config."""
        return {
            LIBRARY_KEY: self.library,
            "architecture": self.architecture,
            "model_args": self.model_args,
            "num_features": self.num_features,
        }

    @abstractmethod
    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last stage's (B, C, h, w)."""

    @abstractmethod
    def embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the pooled (B, C) features its classifier head reads."""


class TimmBackbone(Backbone):
    library: ClassVar[str] = TIMM

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixels)  # type: ignore[operator, no-any-return]

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self._features(pixels)
        if features.ndim != 4:
            raise ValueError(f"timm {self.architecture} gives {features.ndim}-D features, not a (B, C, h, w) map")
        # A few timm models (Swin, ...) keep their maps channels-last.
        return features.permute(0, 3, 1, 2) if getattr(self.model, "output_fmt", "NCHW") == "NHWC" else features

    def embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self._features(pixels), pre_logits=True)  # type: ignore[operator, no-any-return]


class TorchvisionResNet(Backbone):
    library: ClassVar[str] = TORCHVISION

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        # torchvision's ResNet.forward up to its last stage (then it pools and classifies).
        model: Any = self.model
        x = model.maxpool(model.relu(model.bn1(model.conv1(pixels))))
        return model.layer4(model.layer3(model.layer2(model.layer1(x))))  # type: ignore[no-any-return]

    def embedding(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.feature_map(pixels).mean(dim=(2, 3))


@dataclass
class LoadedBackbone:
    """A pretrained backbone with its weights, and the preprocessing of its own eval transform."""

    backbone: Backbone
    preprocessing: Preprocessing


def is_backbone_part(part: dict[str, Any] | None) -> bool:
    """Whether a saved encoder part describes a timm / torchvision backbone (else a transformers config)."""
    return part is not None and part.get(LIBRARY_KEY) in (TIMM, TORCHVISION)


def build_backbone(part: dict[str, Any]) -> Backbone:
    """The backbone a run's config describes, with random weights (the run's weights are loaded over them); a
    missing library is an error naming config.json (the loader names the run)."""
    source = "config.json"
    library, architecture, args = part[LIBRARY_KEY], part["architecture"], dict(part.get("model_args") or {})
    if library == TIMM:
        model = _import(TIMM, source).create_model(architecture, pretrained=False, num_classes=0, **args)
        return TimmBackbone(model, architecture, part["num_features"], args)
    model = _import(TORCHVISION, source).get_model(architecture, weights=None, **args)
    model.fc = nn.Identity()
    return TorchvisionResNet(model, architecture, part["num_features"], args)


def open_backbone(name: str) -> LoadedBackbone | None:
    """The timm / torchvision backbone ``name`` names, with its pretrained weights; None for a Hugging Face part."""
    if name.startswith(f"{TORCHVISION}:"):
        return _torchvision(name)
    if name.startswith(f"{TIMM}:"):
        return _timm_directory(resolve_model_source(_timm_hub_id(name)), name)
    directory = resolve_model_source(name)
    if _is_timm_layout(read_config_json(directory, name)):
        return _timm_directory(directory, name)
    return None


# --- timm


def _is_timm_layout(config: dict[str, Any]) -> bool:
    return "architecture" in config and "pretrained_cfg" in config and "model_type" not in config


def _timm_hub_id(name: str) -> str:
    model_name = name.removeprefix(f"{TIMM}:")
    try:
        pretrained = _import(TIMM, name).models.get_pretrained_cfg(model_name, allow_unregistered=False)
    except RuntimeError as error:
        raise ModelLoadError(name, f"not a timm model with pretrained weights ({first_line(error)})") from None
    if not pretrained.hf_hub_id:
        raise ModelLoadError(name, "timm keeps these weights outside the Hugging Face Hub: pass a directory instead")
    return str(pretrained.hf_hub_id)


def _timm_directory(directory: Path, source: str) -> LoadedBackbone:
    """A timm model in its hub layout: config.json (architecture, num_classes, model_args, pretrained_cfg) and
    model.safetensors, every tensor loaded; then its classifier head is dropped."""
    timm = _import(TIMM, source)
    config = read_config_json(directory, source)
    if not _is_timm_layout(config):
        raise ModelLoadError(source, "config.json is not timm's (it needs architecture and pretrained_cfg)")
    architecture, args = config["architecture"], dict(config.get("model_args") or {})
    # timm writes num_classes among the model_args too; the backbone is rebuilt without a head.
    num_classes = args.pop("num_classes", config.get("num_classes", 0))
    try:
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **args)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ModelLoadError(source, f"timm cannot build {architecture!r} ({first_line(error)})") from None
    _load_state(model, _safetensors(directory / WEIGHTS_FILE, source), source)
    model.reset_classifier(0)
    data = timm.data.resolve_data_config(pretrained_cfg=config["pretrained_cfg"], model=model)
    backbone = TimmBackbone(model, architecture, int(model.num_features), args)
    return LoadedBackbone(backbone, _timm_preprocessing(data, source))


def _timm_preprocessing(data: dict[str, Any], source: str) -> Preprocessing:
    """timm's eval transform (``transforms_imagenet_eval``) as captionkit's preprocessing."""
    _, height, width = data["input_size"]
    crop_pct = data.get("crop_pct") or _TIMM_DEFAULT_CROP_PCT
    mode = data.get("crop_mode") or "center"
    if mode == "center" and height == width:
        crop_from: int | tuple[int, int] = math.floor(height / crop_pct)
    elif mode == "squash":
        crop_from = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    else:
        raise ModelLoadError(source, f"timm's crop_mode {mode!r} at {height}x{width} is not supported")
    return Preprocessing(
        size=(height, width),
        image_mean=tuple(data["mean"]),  # type: ignore[arg-type]
        image_std=tuple(data["std"]),  # type: ignore[arg-type]
        resample=_resample(data["interpolation"], source),
        crop_from=crop_from,
        crop_rounding="half-even",
    )


# --- torchvision


def _torchvision(name: str) -> LoadedBackbone:
    models = _import(TORCHVISION, name)
    spec, _, file = name.removeprefix(f"{TORCHVISION}:").partition("@")
    architecture, _, entry = spec.partition(".")
    try:
        builder, weights_enum = models.get_model_builder(architecture), models.get_model_weights(architecture)
        weights = weights_enum[entry] if entry else weights_enum.DEFAULT
    except (KeyError, ValueError) as error:
        raise ModelLoadError(name, f"not a torchvision classifier with weights ({first_line(error)})") from None
    model = builder(weights=None, num_classes=len(weights.meta["categories"]))
    if not isinstance(model, models.ResNet):
        raise ModelLoadError(name, "only torchvision's ResNets (resnet*, resnext*, wide_resnet*) are supported")
    _load_state(model, _torchvision_state(weights, file, name), name)
    num_features = int(model.fc.in_features)
    model.fc = nn.Identity()
    return LoadedBackbone(TorchvisionResNet(model, architecture, num_features, {}), torchvision_preprocessing(weights))


def _torchvision_state(weights: Any, file: str, source: str) -> dict[str, torch.Tensor]:
    """The state dict in ``file``, or the one torchvision downloads (or finds in its cache) for ``weights``."""
    if file:
        path = Path(file).expanduser()
        if path.suffix not in _TORCHVISION_FILE_SUFFIXES or not path.is_file():
            raise ModelLoadError(
                file, f"no such state-dict file (expected one of {', '.join(_TORCHVISION_FILE_SUFFIXES)})"
            )
        if path.suffix == ".safetensors":
            return _safetensors(path, file)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
        except Exception as error:  # pickle errors, a truncated file, tensors that are not plain weights
            raise ModelLoadError(file, f"unreadable state dict ({first_line(error)})") from None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)  # type: ignore[no-any-return]
    except Exception as error:  # URLError, HTTP errors, a hash mismatch
        reason = f"cannot download torchvision's weights ({first_line(error)})"
        raise ModelLoadError(source, f"{reason}; offline, pass a local file as {source}@FILE") from None


def torchvision_preprocessing(weights: Any) -> Preprocessing:
    """``weights.transforms()`` (``ImageClassification``): shorter edge to resize_size, centre crop, mean, std."""
    transform = weights.transforms()
    (crop,), (resize,) = transform.crop_size, transform.resize_size
    return Preprocessing(
        size=(crop, crop),
        image_mean=tuple(transform.mean),
        image_std=tuple(transform.std),
        resample=_resample(transform.interpolation.value, str(weights)),
        crop_from=resize,
        crop_rounding="half-even",
    )


# --- shared


def _resample(interpolation: str, source: str) -> int:
    """A timm / torchvision interpolation name ("bicubic", "bilinear", ...) as PIL's filter, which both use on PIL
    images."""
    try:
        return int(Image.Resampling[interpolation.upper()])
    except KeyError:
        raise ModelLoadError(source, f"interpolation {interpolation!r} is not supported") from None


def _safetensors(path: Path, source: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelLoadError(source, f"no {path.name}: only safetensors weights are loaded, never pickles")
    try:
        return load_file(str(path))
    except Exception as error:  # SafetensorError, OSError
        raise ModelLoadError(source, f"unreadable weights ({first_line(error)})") from None


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Every tensor of ``state`` into ``model``; any missing, extra or misshapen one is a ModelLoadError."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        reason = " ".join(str(error).split())
        raise ModelLoadError(source, f"weights do not match the architecture ({reason[:200]})") from None
