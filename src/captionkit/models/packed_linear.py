"""Linear layers through oneDNN with prepacked weights, for CPU decoding steps.

A decoder step multiplies a few dozen rows (beams x images) by each weight matrix, so it is bound by reading the
weights, not by arithmetic. PyTorch's default fp32 path (MKL sgemm on the plain row-major weight) reads them at a
few GB/s at this shape; oneDNN reading a weight it has reordered once into its own blocked layout runs the same
product 1.5-2.7x faster on an AVX2 CPU (measured: GPT-2's 768 x 50257 output layer for 32 rows, 67 ms -> 25 ms).
The result is the same fp32 product up to float rounding (differences of about 1e-6). bf16 weights are packed too
where the CPU has bf16 instructions (AVX-512 bf16, AMX), which oneDNN then uses: on such a CPU (2 cores, base preset,
beam 4, batch 8) bf16 decoding ran 1.2x faster packed than through the module; the product is rounded to bf16 either
way, from float32 sums added up in another order, so a caption can differ from the unpacked bf16 one in a near tie.

:func:`linear` applies a ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's transposed linear) through a packed
copy of its weight when that applies: plain CPU tensors in float32 (or bf16, as above), gradients off, oneDNN built
in. Anything else (a GPU, fp16, bf16 on a CPU without bf16 instructions, int8 replacements, tensor subclasses such as
torchao's int8 weights, training) runs the module itself.
Packed copies are cached per module and rebuilt when the weight changes (a new tensor, or an in-place update such as
an optimizer step, which bumps its version). They cost one extra copy of the packed weights' memory while the module
lives.

``CAPTIONKIT_PACKED_LINEAR=0`` in the environment turns packing off (every call runs the module).
"""

from __future__ import annotations

import os
import weakref
from functools import cache

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["linear", "packing_enabled"]

_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int], torch.Tensor]] = weakref.WeakKeyDictionary()


def packing_enabled() -> bool:
    """Whether this process may pack weights (oneDNN available and not turned off by the environment)."""
    return torch.backends.mkldnn.is_available() and os.environ.get("CAPTIONKIT_PACKED_LINEAR", "1") != "0"


def linear(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``module(inputs)`` for a Linear or Conv1D, through a oneDNN-packed weight where that applies."""
    weight = _plain_weight(module, inputs)
    if weight is None:
        return module(inputs)
    key = (weight.data_ptr(), weight._version)
    cached = _PACKED.get(module)
    if cached is None or cached[0] != key:
        # Conv1D keeps (in, out); oneDNN wants nn.Linear's (out, in).
        dense = weight if isinstance(module, nn.Linear) else weight.t().contiguous()
        cached = (key, torch.ops.mkldnn._reorder_linear_weight(dense, inputs.shape[0]))
        _PACKED[module] = cached
    return torch.ops.mkldnn._linear_pointwise(inputs, cached[1], module.bias, "none", [], "")


def _plain_weight(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor | None:
    """The module's CPU weight (fp32, or bf16 per :func:`_packs`) when packing applies to this call, else None."""
    if torch.is_grad_enabled() or inputs.device.type != "cpu" or not _packs(inputs.dtype):
        return None
    if type(module) not in (nn.Linear, Conv1D):
        return None  # subclasses and replacements (int8 linears, LoRA wrappers, ...) run as they are
    weight = module.weight
    if type(weight) not in (torch.Tensor, nn.Parameter):
        return None  # a tensor subclass, such as torchao's int8 weights: only the module knows how to multiply it
    if weight.dtype != inputs.dtype or weight.device.type != "cpu":
        return None
    if not packing_enabled():
        return None
    return weight


def _packs(dtype: torch.dtype) -> bool:
    """Whether products in ``dtype`` are packed: float32 always, bf16 where the CPU computes in it natively."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and _native_bf16())


@cache
def _native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 bf16 or AMX). oneDNN's own bf16 check is true on any AVX-512
    CPU, which emulates bf16 and gains nothing from packing (measured with oneDNN capped at AVX512_CORE: 28.46 ms
    through the module, 28.41 ms packed, for one extra copy of the weights)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch API: absent means no
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
