"""Floating-point precision of a model: the ``--dtype`` names, which devices take them, and a model's own dtype.

Weights are cast once, on load; inputs (pixels) follow the model's dtype where they enter it. Log-probabilities
are always computed in float32 (the families' steps upcast the logits), so beam scores add up alike in every
precision. fp16 is refused on the CPU: PyTorch's CPU kernels run it slowly or not at all, and bf16 covers the
half-precision case there.
"""

from __future__ import annotations

import torch
from torch import nn

from captionkit.errors import InputError

__all__ = ["DTYPES", "model_dtype", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str | torch.dtype | None, device: torch.device, source: str = "dtype") -> torch.dtype:
    """The torch dtype for ``name`` (fp32, bf16, fp16, or a torch dtype among them) on ``device``; None: fp32.

    An ``InputError`` naming ``source`` for an unknown name, or fp16 on a CPU.
    """
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise InputError(source, f"unsupported dtype {name} (expected one of {', '.join(DTYPES)})")
        dtype = name
    elif name in DTYPES:
        dtype = DTYPES[name]
    else:
        raise InputError(source, f"unknown dtype {name!r} (expected one of {', '.join(DTYPES)})")
    if dtype == torch.float16 and device.type == "cpu":
        raise InputError(source, "fp16 needs a GPU; on the CPU use bf16 or fp32")
    return dtype


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights (float32 for a model without any, e.g. all int8)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32
