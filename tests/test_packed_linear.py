"""oneDNN-packed linear layers: same products as the modules, packed only where it applies, rebuilt on change."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from captionkit.models import packed_linear
from captionkit.models.packed_linear import linear, packing_enabled

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


@pytest.fixture(autouse=True)
def packing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of packing: one run with CAPTIONKIT_PACKED_LINEAR=0 in its environment tests it too."""
    monkeypatch.delenv("CAPTIONKIT_PACKED_LINEAR", raising=False)
    assert packing_enabled()


def _layers() -> list[nn.Module]:
    torch.manual_seed(0)
    conv = Conv1D(48, 32)  # GPT-2's transposed linear: weight (in, out)
    nn.init.normal_(conv.weight, std=0.2)
    nn.init.normal_(conv.bias, std=0.2)
    return [nn.Linear(32, 48), nn.Linear(32, 48, bias=False), conv]


@pytest.mark.parametrize("rows", [1, 7, 32])
def test_packed_product_equals_the_module(rows: int) -> None:
    inputs = torch.randn(rows, 32)
    for layer in _layers():
        with torch.no_grad():
            expected = layer(inputs)
            got = linear(layer, inputs)
        assert layer in packed_linear._PACKED, type(layer).__name__
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not packed_linear._native_bf16(), reason="this CPU has no bf16 instructions for oneDNN")
def test_bf16_weights_are_packed_where_the_cpu_computes_in_bf16() -> None:
    """Products rounded to bf16 as the module's are, from float32 sums added up in another order: within bf16's
    rounding of them."""
    inputs = torch.randn(8, 32, dtype=torch.bfloat16)
    for layer in _layers():
        layer = layer.to(torch.bfloat16)
        with torch.no_grad():
            expected = layer(inputs)
            got = linear(layer, inputs)
        assert layer in packed_linear._PACKED, type(layer).__name__
        assert got.dtype == torch.bfloat16 and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1.6e-2, atol=1e-2)


def test_packed_weight_is_rebuilt_after_an_in_place_update() -> None:
    layer = nn.Linear(32, 48)
    inputs = torch.randn(4, 32)
    with torch.no_grad():
        before = linear(layer, inputs)
        layer.weight.mul_(2.0)  # what an optimizer step does: same storage, new version
        layer.bias.zero_()
        after = linear(layer, inputs)
        torch.testing.assert_close(after, layer(inputs), rtol=1e-5, atol=1e-5)
        layer.weight = nn.Parameter(torch.zeros(48, 32))  # a new tensor
        assert torch.count_nonzero(linear(layer, inputs)) == 0
    assert not torch.allclose(before, after)


def test_module_runs_itself_where_packing_does_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = nn.Linear(32, 48)
    inputs = torch.randn(4, 32)
    out = linear(layer, inputs)  # gradients on: the autograd path
    assert out.requires_grad
    out.sum().backward()
    assert layer.weight.grad is not None
    with torch.no_grad():
        half = nn.Linear(32, 48).half()  # fp16: never packed on a CPU
        assert linear(half, inputs.half()).dtype == torch.float16
        monkeypatch.setattr(packed_linear, "_native_bf16", lambda: False)  # bf16 emulated: the module's own path
        bf16 = nn.Linear(32, 48).to(torch.bfloat16)
        torch.testing.assert_close(linear(bf16, inputs.to(torch.bfloat16)), bf16(inputs.to(torch.bfloat16)))
        wrapped = nn.Sequential(nn.Linear(32, 48))  # not a Linear/Conv1D itself (as int8 replacements)
        torch.testing.assert_close(linear(wrapped, inputs), wrapped(inputs))
        monkeypatch.setenv("CAPTIONKIT_PACKED_LINEAR", "0")
        plain = nn.Linear(32, 48)
        torch.testing.assert_close(linear(plain, inputs), plain(inputs))
    for unpacked in (layer, half, bf16, wrapped, plain):
        assert unpacked not in packed_linear._PACKED


class _Marked(torch.Tensor):
    """A tensor subclass, as torchao's int8 weights are: only the module knows how to multiply it."""


def test_a_weight_of_a_tensor_subclass_runs_the_module() -> None:
    layer = nn.Linear(32, 48)
    layer.weight = nn.Parameter(torch.Tensor._make_subclass(_Marked, layer.weight.detach()), requires_grad=False)
    assert type(layer.weight) is _Marked
    inputs = torch.randn(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            linear(layer, inputs).as_subclass(torch.Tensor),
            inputs @ layer.weight.T.as_subclass(torch.Tensor) + layer.bias,
        )
    assert layer not in packed_linear._PACKED
