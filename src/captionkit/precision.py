"""Floating-point precision of a model: the ``--dtype`` names, which devices take them, and a model's own dtype.

Weights are read in the dtype asked for, on load: a model is built in it (:func:`default_dtype`) and its checkpoint's
tensors are cast one at a time as they are copied in (transformers' ``dtype=`` does the same for the Hugging Face
families), so a bf16 or fp16 load never holds the fp32 weights. No tensor is kept in fp32: the result equals the fp32
model cast afterwards, tensor for tensor (batch norms' running statistics included, as ``Module.to`` casts them).
Inputs (pixels) follow the model's dtype where they enter it. Log-probabilities are always computed in float32 (the
families' steps upcast the logits), so beam scores add up alike in every precision. fp16 is refused on the CPU:
PyTorch's CPU kernels run it slowly or not at all, and bf16 covers the half-precision case there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from captionkit.errors import InputError

__all__ = ["DTYPES", "default_dtype", "dtype_name", "model_dtype", "resolve_dtype"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch's and transformers' names for the same dtypes (``torch_dtype="bfloat16"``), taken in any case as the short ones.
_LONG_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def resolve_dtype(name: str | torch.dtype | None, device: torch.device, source: str = "dtype") -> torch.dtype:
    """The torch dtype for ``name`` (fp32, bf16, fp16, torch's names float32, bfloat16, float16 in any case, or a
    torch dtype among them) on ``device``; None: fp32.

    An ``InputError`` naming ``source`` for an unknown name, or fp16 on a CPU.
    """
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise InputError(source, f"unsupported dtype {name} (expected one of {', '.join(DTYPES)})")
        dtype = name
    elif isinstance(name, str) and (key := _LONG_NAMES.get(name.lower(), name.lower())) in DTYPES:
        dtype = DTYPES[key]
    else:
        raise InputError(source, f"unknown dtype {name!r} (expected one of {', '.join(DTYPES)})")
    if dtype == torch.float16 and device.type == "cpu":
        raise InputError(source, "fp16 needs a GPU; on the CPU use bf16 or fp32")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``dtype``'s short name (fp32, bf16, fp16), as reports write it whichever name it was asked by."""
    return next(name for name, known in DTYPES.items() if known == dtype)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights (float32 for a model without any, e.g. all int8)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


@contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Within this block new floating-point tensors are ``dtype`` (None: torch's default is left as it is), so that a
    model built here holds its parameters in ``dtype`` from the start, never in fp32 first.

    torch's default dtype is one setting for the whole process (transformers' ``from_pretrained(dtype=...)`` sets it
    the same way while it builds a model): it is restored on leaving, whatever happens inside.
    """
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
