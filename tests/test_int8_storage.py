"""int8 exports store int8 weights (model.int8.safetensors) and load into exactly the model that quantizing the fp32
checkpoint in memory gives, for every family; older fp32 exports still load; a corrupt file is one clear error."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

from _data import real_photos
from _helpers import FAMILIES, run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.errors import ModelLoadError
from captionkit.export.int8 import QUANTIZATION_FILE, export_int8, quantize_int8
from captionkit.export.int8_weights import INT8_WEIGHTS_FILE, SCALE_SUFFIX

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = real_photos(3)
# A GPT-2 MLP layer of the tiny vit-gpt2 (Conv1D (64, 256) in the checkpoint, Linear (256, 64) once exported).
LAYER = "ved.decoder.transformer.h.0.mlp.c_fc"


def int8_layers(captioner: Captioner) -> dict[str, DynamicInt8Linear]:
    return {n: m for n, m in captioner.model.named_modules() if isinstance(m, DynamicInt8Linear)}


def in_memory_reference(source: Path) -> Captioner:
    """The fp32 checkpoint, quantized in memory: what an int8 export must load as."""
    captioner = Captioner.from_pretrained(source, device="cpu")
    quantize_int8(captioner.model)
    return captioner


def assert_same_int8_model(loaded: Captioner, reference: Captioner) -> None:
    """The same int8 layers (values and scales), the same logits, the same beam-search captions, token by token."""
    layers, expected = int8_layers(loaded), int8_layers(reference)
    assert list(layers) == list(expected) and layers
    for name, layer in layers.items():
        (weight, bias), (weight_ref, bias_ref) = layer._weight_bias(), expected[name]._weight_bias()
        assert torch.equal(weight.int_repr(), weight_ref.int_repr()), name
        assert torch.equal(weight.q_per_channel_scales(), weight_ref.q_per_channel_scales()), name
        assert (bias is None and bias_ref is None) or torch.equal(bias, bias_ref), name
    pixels = torch.from_numpy(loaded.preprocessing(loaded.load_images(PHOTOS)))
    ids = torch.randint(0, loaded.model.vocab_size, (len(PHOTOS), 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(pixels, ids), reference.model(pixels, ids))
    found = loaded.caption(PHOTOS, num_beams=2, max_new_tokens=8)
    wanted = reference.caption(PHOTOS, num_beams=2, max_new_tokens=8)
    assert [r.captions[0].token_ids for r in found] == [r.captions[0].token_ids for r in wanted]


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_export_stores_int8_and_loads_as_the_in_memory_quantized_model(family: str, tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "fp32", family)
    info = export_int8(source, tmp_path / "int8")
    assert info["storage"] == "int8"
    assert not (tmp_path / "int8" / "model.safetensors").exists()  # no fp32 copy of the weights
    stored = load_file(tmp_path / "int8" / INT8_WEIGHTS_FILE)
    scaled = sorted(key.removesuffix(SCALE_SUFFIX) for key in stored if key.endswith(SCALE_SUFFIX))
    tables = info["embeddings"]
    fp32 = Captioner.from_pretrained(source, device="cpu")
    assert tables == [n for n, m in fp32.model.named_modules() if type(m) is torch.nn.Embedding] and tables
    assert len(scaled) == info["layers"] + len(tables) and info["layers"] > 0
    for name in scaled:
        weight, scales = stored[f"{name}.weight"], stored[f"{name}{SCALE_SUFFIX}"]
        assert (weight.dtype, scales.dtype, scales.shape) == (torch.int8, torch.float32, (weight.shape[0],))
    kept = [tensor for key, tensor in stored.items() if key.removesuffix(".weight") not in scaled]
    assert {t.dtype for t in kept if t.is_floating_point()} == {torch.float32}  # BatchNorm counters stay int64
    assert not any(t.dtype == torch.int8 for t in kept)
    fp32_count = fp32.num_parameters
    loaded = Captioner.from_pretrained(tmp_path / "int8")
    assert loaded.device == torch.device("cpu") and sorted(int8_layers(loaded)) == sorted(set(scaled) - set(tables))
    for name in tables:  # each table is its int8 values times its row scales, close to the fp32 table
        table, original = loaded.model.get_submodule(name).weight, fp32.model.get_submodule(name).weight
        assert torch.equal(table, stored[f"{name}.weight"].float() * stored[f"{name}{SCALE_SUFFIX}"][:, None])
        assert (table - original).abs().max() <= original.abs().amax() / 254 + 1e-7
    assert_same_int8_model(loaded, in_memory_reference(source))
    assert loaded.num_parameters == fp32_count  # the true count: int8 layers included, the tied head once


def test_int8_weights_take_a_byte_per_quantized_weight(tmp_path: Path) -> None:
    """Every tensor is stored once: 1 byte per quantized weight (linear layers and embedding tables, the tied head
    with its table), 4 per scale and per other parameter. The tiny vit-gpt2 shrinks to under 35% of its fp32 file
    (layer norms, biases and scales weigh more in so small a model than in the base preset)."""
    source = save_tiny_model(tmp_path / "fp32")
    export_int8(source, tmp_path / "int8")
    stored = load_file(tmp_path / "int8" / INT8_WEIGHTS_FILE)
    int8_weights = sum(t.numel() for t in stored.values() if t.dtype == torch.int8)
    scales = sum(t.numel() for key, t in stored.items() if key.endswith(SCALE_SUFFIX))
    parameters = Captioner.from_pretrained(source, device="cpu").num_parameters
    assert sum(t.nbytes for t in stored.values()) == int8_weights + 4 * (parameters - int8_weights + scales)
    fp32_size = (source / "model.safetensors").stat().st_size
    assert (tmp_path / "int8" / INT8_WEIGHTS_FILE).stat().st_size < 0.35 * fp32_size


def test_an_int8_export_with_fp32_tables_still_loads(tmp_path: Path) -> None:
    """int8 exports written while the embedding tables stayed fp32 (no row scales) load with those tables as stored."""
    source = save_tiny_model(tmp_path / "fp32")
    info = export_int8(source, tmp_path / "int8")
    weights = tmp_path / "int8" / INT8_WEIGHTS_FILE
    tensors = load_file(weights)
    fp32 = Captioner.from_pretrained(source, device="cpu")
    for name in info["embeddings"]:
        del tensors[f"{name}{SCALE_SUFFIX}"]
        tensors[f"{name}.weight"] = fp32.model.get_submodule(name).weight.detach().clone()
    save_file(tensors, weights)
    loaded = Captioner.from_pretrained(tmp_path / "int8")
    for name in info["embeddings"]:
        assert torch.equal(loaded.model.get_submodule(name).weight, fp32.model.get_submodule(name).weight)
    assert loaded.caption(PHOTOS, num_beams=2, max_new_tokens=8)[0].captions


def test_an_export_with_fp32_weights_is_quantized_on_load(tmp_path: Path) -> None:
    """Exports written before int8 storage (fp32 weights + quantization.json without "storage") still load."""
    source = save_tiny_model(tmp_path / "fp32")
    legacy = Path(shutil.copytree(source, tmp_path / "legacy"))
    old_info = {"method": "int8-dynamic", "backend": "torch.ao", "layers": 27, "kept_fp32": ["lm_head"], "note": ""}
    (legacy / QUANTIZATION_FILE).write_text(json.dumps(old_info))
    loaded = Captioner.from_pretrained(legacy)
    assert loaded.device == torch.device("cpu") and len(int8_layers(loaded)) == 27
    assert_same_int8_model(loaded, in_memory_reference(source))
    assert loaded.num_parameters == Captioner.from_pretrained(source, device="cpu").num_parameters
    (legacy / QUANTIZATION_FILE).write_text(json.dumps(old_info | {"storage": "int4"}))
    with pytest.raises(ModelLoadError) as error:
        Captioner.from_pretrained(legacy)
    assert str(error.value) == f"{legacy / QUANTIZATION_FILE}: unknown storage 'int4' (known: int8, fp32)"


def _drop(name: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        del tensors[name]

    return edit


def _set(name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = change(tensors[name])

    return edit


NORM = "ved.decoder.transformer.ln_f.weight"
CORRUPTIONS = {
    "no scales": (_drop(f"{LAYER}{SCALE_SUFFIX}"), f"{LAYER}{SCALE_SUFFIX}: missing"),
    "fp16 scales": (
        _set(f"{LAYER}{SCALE_SUFFIX}", torch.Tensor.half),
        f"{LAYER}{SCALE_SUFFIX}: dtype float16, expected float32",
    ),
    "zero scale": (
        _set(f"{LAYER}{SCALE_SUFFIX}", torch.zeros_like),
        f"{LAYER}{SCALE_SUFFIX}: scales must be positive and finite",
    ),
    "int8 rows lost": (
        _set(f"{LAYER}.weight", lambda w: w[1:]),
        f"{LAYER}.weight: shape (255, 64), expected (256, 64)",
    ),
    "fp32 weight": (_set(f"{LAYER}.weight", torch.Tensor.float), f"{LAYER}.weight: dtype float32, expected int8"),
    "fp16 norm": (_set(NORM, torch.Tensor.half), f"{NORM}: dtype float16, expected float32"),
    "no norm": (_drop(NORM), f"{NORM}: missing"),
    "stray tensor": (
        lambda tensors: tensors.update(extra=torch.zeros(2)),
        "extra: not a tensor of this model",
    ),
}


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("int8")
    export_int8(save_tiny_model(root / "fp32"), root / "int8")
    return root / "int8"


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_int8_file_is_one_error_naming_it(corruption: str, int8_export: Path, tmp_path: Path) -> None:
    edit, reason = CORRUPTIONS[corruption]
    export = Path(shutil.copytree(int8_export, tmp_path / "int8"))
    tensors = load_file(export / INT8_WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, export / INT8_WEIGHTS_FILE)
    with pytest.raises(ModelLoadError) as error:
        Captioner.from_pretrained(export)
    assert str(error.value) == f"{export / INT8_WEIGHTS_FILE}: {reason}"


def test_a_truncated_or_missing_int8_file_is_one_line(
    int8_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = Path(shutil.copytree(int8_export, tmp_path / "int8"))
    weights = export / INT8_WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli(["caption", PHOTOS[0], "--model", export], capsys)
    assert code == 1
    assert err.strip().startswith(f"captionkit: error: {weights}: unreadable int8 weights (")
    assert len(err.strip().splitlines()) == 1
    weights.unlink()
    with pytest.raises(ModelLoadError) as error:
        Captioner.from_pretrained(export)
    assert str(error.value) == f"{export}: no {INT8_WEIGHTS_FILE} (the int8 export's weights)"


def test_caption_and_evaluate_take_the_int8_export(
    int8_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands read the int8 export through the one loader: ``caption`` writes the in-memory quantized model's
    captions, and ``evaluate`` gives the same figures as an export of the same model with fp32 weights."""
    source = int8_export.parent / "fp32"
    wanted = [r.caption for r in in_memory_reference(source).caption(PHOTOS, num_beams=2, max_new_tokens=6)]
    code, out, err = run_cli(["caption", *PHOTOS, "--model", int8_export, "--beams", "2", "--max-length", "6"], capsys)
    assert code == 0, err
    assert [json.loads(line)["caption"] for line in out.splitlines()] == wanted
    legacy = Path(shutil.copytree(source, tmp_path / "legacy"))
    (legacy / QUANTIZATION_FILE).write_text(json.dumps({"method": "int8-dynamic", "backend": "torch.ao"}))
    scenes = write_synthetic_dataset(tmp_path / "scenes", 4, 2, 3, seed=0, image_size=32)
    metrics = []
    for model in (int8_export, legacy):
        args = ["evaluate", "--model", model, "--data", scenes, "--beams", "1", "--metrics", "BLEU,CIDEr"]
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        metrics.append(json.loads(out))
    assert metrics[0]["images"] == 3 and metrics[0] == metrics[1]
