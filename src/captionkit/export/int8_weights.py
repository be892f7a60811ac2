"""An int8 export's weights file: int8 linear layers and embedding tables stored as int8, every other tensor as the
model holds it.

``model.int8.safetensors`` (safetensors, never a pickle) holds, for each torch.ao dynamic int8 linear layer ``L``:

* ``L.weight``: int8, (out, in), the quantized values;
* ``L.weight_scale``: float32, (out,), one scale per output channel (torch's per-channel symmetric scheme:
  max|row| / 127.5, at least float32's eps; values -128..127; every zero point is 0);
* ``L.bias``: float32, (out,), when the layer has one;

for each embedding table ``E`` (``nn.Embedding``: token and position tables, and so an output head tied to the
token table) rounded to int8 at quantization (:func:`round_embeddings`):

* ``E.weight``: int8, (rows, dim), and ``E.weight_scale``: float32, (rows,), one scale per row; a load turns them
  back into the float table the quantized model used (lookups need float rows), bit for bit;

and every other parameter and buffer under its own name and dtype (layer norms, position parameters,
convolutions, LSTMs), a tensor tied to one stored above or to an earlier one only once. The fp32 copies of quantized
weights are not stored: a model made of linear layers and embeddings takes about a quarter of its fp32 size. Files
written before embeddings were rounded (their tables in fp32, without scales) still load.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from captionkit.errors import ModelLoadError, first_line

INT8_WEIGHTS_FILE = "model.int8.safetensors"
SCALE_SUFFIX = ".weight_scale"
# The per-row scales of a rounded embedding table, kept on its module (not in its state dict) for the export.
ROW_SCALES = "int8_row_scales"
# torch (2.10 on) warns that making a quantized tensor is deprecated, but torch.ao's int8 linear layers take nothing
# else; unsilenced, the notice would print on every load of an int8 export, to users who can do nothing about it
# (quantization.json's "note" says it once, where the export is made).
QUANTIZED_TENSOR_DEPRECATION = r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor"


def int8_rows(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``table`` (2-D, float) as int8 values and one float32 scale per row (symmetric, -127..127).

    A scale is at least float32's eps, as torch's observer makes those of the int8 layers: a row so small that
    peak / 127 underflowed to 0 got a scale of 0, which the loader refuses."""
    peak = table.detach().float().abs().amax(dim=1)
    scales = (peak / 127).clamp(min=torch.finfo(torch.float32).eps)
    return torch.round(table.detach().float() / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def float_rows(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 table that int8 ``values`` with per-row ``scales`` stand for."""
    return values.float() * scales[:, None]


def round_embeddings(model: nn.Module) -> list[str]:
    """Round every float ``nn.Embedding`` table of ``model`` to int8 per row, in place (a tied output head follows),
    keeping each table's scales on its module; returns their names."""
    names = []
    for name, module in model.named_modules():
        if type(module) is nn.Embedding and module.weight.is_floating_point():
            values, scales = int8_rows(module.weight)
            with torch.no_grad():
                module.weight.copy_(float_rows(values, scales))
            module.register_buffer(ROW_SCALES, scales, persistent=False)
            names.append(name)
    return names


def save_int8_weights(model: nn.Module, path: Path) -> None:
    """Write ``model`` (its linear layers quantized by torch.ao, per output channel) to ``path``."""
    layers = _int8_layers(model)
    tables = _rounded_tables(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, table in tables.items():
        scales = getattr(table, ROW_SCALES)
        # Exact: the table holds int8 values times these scales, so dividing gives the values back.
        tensors[f"{name}.weight"] = torch.round(table.weight.detach() / scales[:, None]).clamp(-127, 127).to(torch.int8)
        tensors[f"{name}{SCALE_SUFFIX}"] = scales.clone()
    for name, layer in layers.items():
        weight, bias = layer._weight_bias()
        if weight.qscheme() != torch.per_channel_affine or weight.q_per_channel_zero_points().any():
            raise ValueError(f"{name}: its int8 weight is not quantized per output channel, symmetric")
        tensors[f"{name}.weight"] = weight.int_repr()
        tensors[f"{name}{SCALE_SUFFIX}"] = weight.q_per_channel_scales().float()
        if bias is not None:
            # A copy: a bias may share memory with a kept tensor, which safetensors refuses to write.
            tensors[f"{name}.bias"] = bias.detach().clone()
    tensors |= _plain_tensors(model, [*layers, *tables])
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path), metadata={"format": "pt"})


def load_int8_weights(model: nn.Module, path: Path) -> nn.Module:
    """Fill ``model`` (the exported architecture with new weights, GPT-2's Conv1D already ``nn.Linear``) from
    ``path``: each stored int8 layer replaces its linear layer, and every other tensor must match the model's by
    name, dtype and shape. Anything else is one :class:`ModelLoadError` naming the file."""
    tensors = _read(path)
    layers = {key.removesuffix(SCALE_SUFFIX) for key in tensors if key.endswith(SCALE_SUFFIX)}
    layers |= {key.removesuffix(".weight") for key, value in tensors.items() if _is_int8_weight(key, value)}
    tables = []
    for name in sorted(layers):
        if type(_submodule(model, name)) is nn.Embedding:
            _fill_table(model.get_submodule(name), name, tensors, path)
            tables.append(name)
        else:
            parent, _, child = name.rpartition(".")
            model.get_submodule(parent).register_module(child, _int8_linear(model, name, tensors, path))
    expected = _plain_tensors(model, [*_int8_layers(model), *tables])
    unexpected, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
    if unexpected or missing:
        name = (unexpected or missing)[0]
        raise ModelLoadError(path, f"{name}: {'not a tensor of this model' if unexpected else 'missing'}")
    with torch.no_grad():
        for name, target in expected.items():
            _check(path, name, tensors[name], target.dtype, target.shape)
            target.copy_(tensors[name])
    return model


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelLoadError(path.parent, f"no {INT8_WEIGHTS_FILE} (the int8 export's weights)")
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise ModelLoadError(path, f"unreadable int8 weights ({first_line(error)})") from None


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _int8_values(
    path: Path, name: str, tensors: dict[str, torch.Tensor], shape: torch.Size
) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 weight stored under ``name`` and its per-row scales, checked and taken out of ``tensors``."""
    weight = _check(path, f"{name}.weight", tensors.pop(f"{name}.weight", None), torch.int8, shape)
    scales = _check(
        path, f"{name}{SCALE_SUFFIX}", tensors.pop(f"{name}{SCALE_SUFFIX}", None), torch.float32, (weight.shape[0],)
    )
    if not bool(torch.isfinite(scales).all() and (scales > 0).all()):
        raise ModelLoadError(path, f"{name}{SCALE_SUFFIX}: scales must be positive and finite")
    return weight, scales


def _fill_table(table: nn.Module, name: str, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The embedding table stored under ``name`` as int8 values and row scales, back in float (a tied head too)."""
    values, scales = _int8_values(path, name, tensors, table.weight.shape)
    with torch.no_grad():
        table.weight.copy_(float_rows(values, scales))
    table.register_buffer(ROW_SCALES, scales, persistent=False)


def _int8_linear(model: nn.Module, name: str, tensors: dict[str, torch.Tensor], path: Path) -> DynamicInt8Linear:
    """The int8 layer stored under ``name`` (its tensors taken out of ``tensors``), in place of that linear layer."""
    linear = _submodule(model, name)
    # The tensor that made ``name`` an int8 layer: its scales, or an int8 weight alone (one stored as int8 in error).
    key = f"{name}{SCALE_SUFFIX}" if f"{name}{SCALE_SUFFIX}" in tensors else f"{name}.weight"
    if linear is None:
        raise ModelLoadError(path, f"{key}: the model has no layer {name!r}")
    if type(linear) is not nn.Linear:
        raise ModelLoadError(path, f"{key}: {name} is a {type(linear).__name__}, not a linear layer")
    weight, scales = _int8_values(path, name, tensors, linear.weight.shape)
    bias = tensors.pop(f"{name}.bias", None)
    if linear.bias is not None:
        bias = _check(path, f"{name}.bias", bias, torch.float32, linear.bias.shape)
    elif bias is not None:
        raise ModelLoadError(path, f"{name}.bias: the model's layer {name} has no bias")
    quantized = _per_channel_qint8(weight, scales)
    layer = DynamicInt8Linear(linear.in_features, linear.out_features, bias_=bias is not None, dtype=torch.qint8)
    layer.set_weight_bias(quantized, bias)
    return layer


def _per_channel_qint8(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 ``weight`` with one ``scales`` entry per output channel (zero points 0) as torch's quantized tensor,
    without torch's deprecation notice for quantized tensors (and only that one)."""
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QUANTIZED_TENSOR_DEPRECATION, category=UserWarning)
        return torch._make_per_channel_quantized_tensor(weight, scales.double(), zero_points, 0)


def _check(
    path: Path, name: str, tensor: torch.Tensor | None, dtype: torch.dtype, shape: tuple[int, ...] | torch.Size
) -> torch.Tensor:
    if tensor is None:
        raise ModelLoadError(path, f"{name}: missing")
    if tensor.dtype != dtype:
        raise ModelLoadError(path, f"{name}: dtype {_dtype_name(tensor.dtype)}, expected {_dtype_name(dtype)}")
    if tensor.shape != shape:
        raise ModelLoadError(path, f"{name}: shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    return tensor


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _int8_layers(model: nn.Module) -> dict[str, DynamicInt8Linear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, DynamicInt8Linear)}


def _rounded_tables(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if hasattr(module, ROW_SCALES)}


def _plain_tensors(model: nn.Module, stored: Iterable[str]) -> dict[str, torch.Tensor]:
    """``model``'s parameters and persistent buffers outside the modules named in ``stored`` (kept as int8) by
    state-dict name (sharing the model's memory), each tied group once, under its first name; a tensor tied to one
    inside those modules (a head sharing a rounded token table) not at all."""
    inside = tuple(f"{name}." for name in stored)
    state = model.state_dict()

    def identity(tensor: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        return tensor.data_ptr(), tuple(tensor.shape), tensor.stride()

    seen = {identity(t) for name, t in state.items() if name.startswith(inside) and isinstance(t, torch.Tensor)}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(inside):
            continue
        if tensor.numel() and identity(tensor) in seen:
            continue
        seen.add(identity(tensor))
        tensors[name] = tensor
    return tensors


def _is_int8_weight(name: str, tensor: torch.Tensor) -> bool:
    return name.endswith(".weight") and tensor.dtype == torch.int8
