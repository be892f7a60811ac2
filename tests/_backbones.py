"""Tiny random timm and torchvision backbones, saved in the layouts those libraries load (make test-vision only).

timm's is its hub layout, written by timm itself (``save_for_hf``: config.json with architecture, model_args and
pretrained_cfg, model.safetensors); torchvision's is a state-dict file beside the weights enum that gives its
preprocessing. timm and torchvision are imported inside the builders: the main venv collects this module without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# A timm ResNet with one block per stage, shown 64 px images (its pretrained_cfg: crop_pct 0.95, so the shorter edge
# goes to 67 and the centre crop's margins are odd: torchvision's rounding matters).
TIMM_RESNET = {"architecture": "resnet18", "layers": [1, 1, 1, 1]}
# A one-block ViT (vit_tiny_patch16_224's width 192) on 32 px images in 8 px patches.
TIMM_VIT = {"architecture": "vit_tiny_patch16_224", "depth": 1, "img_size": 32, "patch_size": 8}


def save_timm(directory: Path, architecture: str, input_size: int, seed: int = 0, **model_args: Any) -> Path:
    """A timm classifier (10 classes) in the hub layout, as ``timm.models.push_to_hf_hub`` uploads it."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(architecture, pretrained=False, num_classes=10, **model_args).eval()
    data_config = {"input_size": (3, input_size, input_size)}
    timm.models.save_for_hf(model, directory, safe_serialization=True, data_config=data_config)
    return directory


def save_torchvision_resnet18(path: Path, seed: int = 0) -> Path:
    """A randomly initialised torchvision resnet18 state dict (all 1,000 classes), as a safetensors file."""
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    state = resnet18(weights=None).state_dict()
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path
