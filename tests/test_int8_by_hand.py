"""The int8 export checked by hand against its definition: Conv1D as Linear, torch's per-channel symmetric scales
for the int8 layers (max|row| / 127.5, values -128..127, zero points 0), int8 embedding rows (max|row| / 127,
-127..127, at least float32's eps), the tied head, the parameter count; weights holding nan or inf refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.errors import ModelLoadError
from captionkit.export.int8 import QUANTIZATION_FILE, conv1d_to_linear, export_int8, quantize_int8
from captionkit.export.int8_weights import INT8_WEIGHTS_FILE, SCALE_SUFFIX
from captionkit.models.native import WEIGHTS_FILE

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = torch.finfo(torch.float32).eps
# A GPT-2 MLP layer of the tiny vit-gpt2 (a Conv1D (in 64, out 256) in the checkpoint) and its token table.
LAYER = "ved.decoder.transformer.h.0.mlp.c_fc"
TABLE = "ved.decoder.transformer.wte"
ZERO_ROW, TINY_ROW = 3, 5


def edit_checkpoint(directory: Path, name: str, change: Callable[[torch.Tensor], None]) -> None:
    """Change the fp32 checkpoint's tensor ``name`` (the model's name, stored without ``ved.``) in place."""
    path = directory / WEIGHTS_FILE
    tensors = load_file(path)
    key = name.removeprefix("ved.")
    tensor = tensors[key].clone()
    change(tensor)
    tensors[key] = tensor
    save_file(tensors, path, metadata={"format": "pt"})


def set_element(index: int, value: float) -> Callable[[torch.Tensor], None]:
    def change(tensor: torch.Tensor) -> None:
        tensor.view(-1)[index] = value

    return change


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny vit-gpt2 whose layer has a row of zeros and whose token table a row far below float32's eps, and its
    int8 export."""
    root = tmp_path_factory.mktemp("by_hand")
    source = save_tiny_model(root / "fp32")

    def zero_output_channel(weight: torch.Tensor) -> None:
        weight[:, ZERO_ROW] = 0  # Conv1D stores (in, out): column = output channel

    def tiny_row(table: torch.Tensor) -> None:
        table[TINY_ROW] *= 1e-43  # peak / 127 underflows to 0 in float32

    edit_checkpoint(source, f"{LAYER}.weight", zero_output_channel)
    edit_checkpoint(source, f"{TABLE}.weight", tiny_row)
    export_int8(source, root / "int8")
    return root / "int8"


def fp32_model(export: Path) -> nn.Module:
    return Captioner.from_pretrained(export.parent / "fp32", device="cpu").model


def test_conv1d_becomes_the_linear_with_its_weight_transposed_and_its_bias() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(5, 3))  # nf=5 outputs, nx=3 inputs: weight (3, 5)
    with torch.no_grad():
        model[0].bias.normal_()
    conv = model[0]
    inputs = torch.randn(4, 2, 3)
    with torch.no_grad():
        before = model(inputs)
        assert conv1d_to_linear(model) == 1
        after = model(inputs)
    linear = model[0]
    assert type(linear) is nn.Linear and (linear.in_features, linear.out_features) == (3, 5)
    assert torch.equal(linear.weight, conv.weight.t()) and torch.equal(linear.bias, conv.bias)
    assert (after - before).abs().max() <= 1e-6


def test_int8_layers_store_torchs_per_channel_symmetric_values(export: Path) -> None:
    """scale = max|row| / 127.5 (torch's per_channel_symmetric over -128..127; eps for a row of zeros), zero points
    0, values round(w * (1 / scale)) clamped to -128..127 (torch multiplies by the inverse: a row's peak, at
    +-127.5 scales, rounds to +-127 or +-128 as that product falls), each within half a scale of the weight: what the
    file holds and what the loaded layer holds."""
    weight = fp32_model(export).get_submodule(LAYER).weight.detach().t()  # the Conv1D as Linear: (out, in)
    scales = (weight.abs().amax(dim=1) / 127.5).clamp(min=EPS)
    values = torch.round(weight * (1 / scales)[:, None]).clamp(-128, 127).to(torch.int8)
    assert scales[ZERO_ROW] == EPS and not values[ZERO_ROW].any()
    # Half a scale, give or take the scale's float32 rounding times 127.5 (at a row's peak).
    assert ((values.float() * scales[:, None] - weight).abs() <= scales[:, None] / 2 * (1 + 1e-4)).all()
    stored = load_file(export / INT8_WEIGHTS_FILE)
    assert torch.equal(stored[f"{LAYER}{SCALE_SUFFIX}"], scales)
    assert torch.equal(stored[f"{LAYER}.weight"], values)
    loaded, _ = Captioner.from_pretrained(export).model.get_submodule(LAYER)._weight_bias()
    assert torch.equal(loaded.int_repr(), values) and not loaded.q_per_channel_zero_points().any()
    assert torch.equal(loaded.q_per_channel_scales(), scales.double())


def test_embedding_rows_are_int8_within_half_a_scale_and_the_tied_head_follows(export: Path) -> None:
    """Each token row: scale = max|row| / 127 (at least eps: the tiny row's peak / 127 was 0, which made an export
    that failed to load), values -127..127 within scale / 2; the head stays tied to the table after load."""
    original = fp32_model(export).get_submodule(TABLE).weight.detach()
    stored = load_file(export / INT8_WEIGHTS_FILE)
    values, scales = stored[f"{TABLE}.weight"], stored[f"{TABLE}{SCALE_SUFFIX}"]
    assert torch.equal(scales, (original.abs().amax(dim=1) / 127).clamp(min=EPS)) and scales[TINY_ROW] == EPS
    assert values.dtype == torch.int8 and int(values.abs().max()) == 127
    assert torch.equal(values, torch.round(original / scales[:, None]).clamp(-127, 127).to(torch.int8))
    loaded = Captioner.from_pretrained(export).model
    table = loaded.get_submodule(TABLE).weight
    assert torch.equal(table, values.float() * scales[:, None])
    assert ((table - original).abs() <= scales[:, None] / 2).all()
    assert loaded.ved.decoder.lm_head.weight is table


def test_the_loaded_export_is_the_in_memory_int8_model_with_the_fp32_parameter_count(export: Path) -> None:
    source = export.parent / "fp32"
    reference = Captioner.from_pretrained(source, device="cpu")
    fp32_count = reference.num_parameters
    quantize_int8(reference.model)
    loaded = Captioner.from_pretrained(export)
    ids = torch.randint(0, loaded.model.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(pixels, ids), reference.model(pixels, ids))
    assert loaded.num_parameters == reference.num_parameters == fp32_count


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", [f"{LAYER}.weight", f"{TABLE}.weight"])
def test_weights_holding_nan_or_inf_are_refused_in_one_line(
    name: str, value: float, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exported, a nan row came back as whole numbers and an inf scale made a file that failed to load."""
    source = save_tiny_model(tmp_path / "fp32")
    edit_checkpoint(source, name, set_element(7, value))
    output = tmp_path / "int8"
    code, out, err = run_cli(["export", "int8", "--model", source, "--output", output], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: {source}: {name} holds nan or inf values, which int8 cannot represent\n"
    assert not output.exists()


def test_an_fp32_export_holding_nan_is_refused_on_load(tmp_path: Path) -> None:
    """An export keeping fp32 weights (torchao's, or written before int8 storage) is quantized on load: refused."""
    legacy = save_tiny_model(tmp_path / "legacy")
    (legacy / QUANTIZATION_FILE).write_text(json.dumps({"method": "int8-dynamic", "backend": "torch.ao"}))
    edit_checkpoint(legacy, f"{LAYER}.weight", set_element(0, float("nan")))
    with pytest.raises(ModelLoadError) as error:
        Captioner.from_pretrained(legacy)
    assert str(error.value) == f"{legacy}: {LAYER}.weight holds nan or inf values, which int8 cannot represent"


def test_a_tensor_stored_as_int8_in_error_is_named_in_the_error(export: Path, tmp_path: Path) -> None:
    """A layer norm's weight turned int8 (no scales): the error names that tensor, not a scales tensor it lacks."""
    tampered = Path(shutil.copytree(export, tmp_path / "int8"))
    norm = "ved.decoder.transformer.ln_f"
    tensors = load_file(tampered / INT8_WEIGHTS_FILE)
    tensors[f"{norm}.weight"] = tensors[f"{norm}.weight"].to(torch.int8)
    save_file(tensors, tampered / INT8_WEIGHTS_FILE)
    with pytest.raises(ModelLoadError) as error:
        Captioner.from_pretrained(tampered)
    reason = f"{norm}.weight: {norm} is a LayerNorm, not a linear layer"
    assert str(error.value) == f"{tampered / INT8_WEIGHTS_FILE}: {reason}"
