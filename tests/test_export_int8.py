"""int8 export: Conv1D -> Linear, dynamic quantization (torch.ao by default, torchao on request), save and load."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from transformers.pytorch_utils import Conv1D

from _families import train_tiny
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig, generate
from captionkit.errors import ModelLoadError
from captionkit.export.int8 import (
    BACKENDS,
    QUANTIZATION_FILE,
    conv1d_to_linear,
    export_int8,
    quantize_int8,
    torchao_installed,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def quantized_linears(model: nn.Module) -> int:
    """Linear layers quantized by either backend (torch.ao modules, or torchao int8 weight tensors)."""
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    return sum(
        isinstance(module, dynamic) or type(getattr(module, "weight", None)).__name__ == "Int8Tensor"
        for module in model.modules()
    )


def test_conv1d_becomes_an_equal_linear(make_vit_gpt2: Callable, make_pixels: Callable) -> None:
    model = make_vit_gpt2(seed=1)
    pixels, ids = make_pixels(2, 0), torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(pixels, ids)
        # 2 layers x (attn c_attn, c_proj; cross q_attn, c_attn, c_proj; mlp c_fc, c_proj)
        assert conv1d_to_linear(model) == 14
        after = model(pixels, ids)
    assert not any(isinstance(module, Conv1D) for module in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


# torchao is the optional extra 'int8', not in dev (transformers imports it in every process once installed): its
# case runs in the extras venv (make test-vision), where it is installed.
@pytest.mark.parametrize(
    "backend", [pytest.param(b, marks=[pytest.mark.torchao] if b == "torchao" else []) for b in BACKENDS]
)
def test_int8_model_decodes_close_to_fp32(make_vit_gpt2: Callable, make_pixels: Callable, backend: str) -> None:
    assert backend != "torchao" or torchao_installed(), "the torchao case runs where the extra 'int8' is installed"
    model = make_vit_gpt2(seed=1, initializer_range=0.1)
    pixels = make_pixels(4, 2)
    config = DecodingConfig(max_new_tokens=8, num_beams=2)
    fp32 = generate(model, pixels, config=config)
    with torch.no_grad():
        fp32_logits = model(pixels, torch.tensor([[1, 5, 6]] * 4))
    info = quantize_int8(model, backend)
    assert (
        info["backend"] == backend and info["layers"] == 2 * 6 + 1 + 14
    )  # ViT: q, k, v, out, 2 MLP per layer; its pooler
    assert model.ved.decoder.lm_head.weight.dtype == torch.float32  # the tied head stays fp32
    with torch.no_grad():
        int8_logits = model(pixels, torch.tensor([[1, 5, 6]] * 4))
    error = (int8_logits - fp32_logits).abs().max() / fp32_logits.abs().max()
    assert 0 < error < 0.05  # quantized (not identical), yet close
    int8 = generate(model, pixels, config=config)
    assert [len(found) for found in int8] == [1, 1, 1, 1]
    assert sum(a[0].token_ids == b[0].token_ids for a, b in zip(int8, fp32, strict=True)) >= 2


def test_export_int8_loads_quantized(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_tiny_model(tmp_path / "fp32")
    code, out, err = run_cli(["export", "int8", "--model", source, "--output", tmp_path / "int8"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert (info["method"], info["backend"], info["layers"]) == ("int8-dynamic", "torch.ao", 27)
    assert "deprecated" in info["note"]
    assert json.loads((tmp_path / "int8" / QUANTIZATION_FILE).read_text()) == info
    loaded = Captioner.from_pretrained(tmp_path / "int8")
    plain = Captioner.from_pretrained(source)
    assert loaded.device == torch.device("cpu")
    assert (quantized_linears(plain.model), quantized_linears(loaded.model)) == (0, 27)
    # The true parameter count, the 27 int8 layers' weights and biases included (parameters() skips them).
    fp32_count = sum(p.numel() for p in plain.model.parameters())
    assert loaded.num_parameters == plain.num_parameters == fp32_count
    assert sum(p.numel() for p in loaded.model.parameters()) < fp32_count
    # Exporting an export is refused; a bad backend is a usage error.
    code, _, err = run_cli(["export", "int8", "--model", tmp_path / "int8", "--output", tmp_path / "again"], capsys)
    assert (code, err.strip()) == (
        1,
        f"captionkit: error: {tmp_path / 'int8'}: is an int8 export (quantization.json), for captioning only: use the "
        "checkpoint it was exported from",
    )
    code, _, err = run_cli(
        ["export", "int8", "--model", source, "--output", tmp_path / "x", "--backend", "fbgemm"], capsys
    )
    assert (code, err.strip()) == (
        1,
        "captionkit: error: --backend: unknown int8 backend 'fbgemm' (known: torch.ao, torchao)",
    )


def test_loading_an_int8_export_prints_no_deprecation_notice(tmp_path: Path) -> None:
    """torch deprecates making quantized tensors, which its int8 linear layers need; the export's note says so once.
    torch warns once per process, so a fresh one loads the export and captions."""
    source = save_tiny_model(tmp_path / "fp32")
    export_int8(source, tmp_path / "int8")
    script = "import sys; from captionkit.api import Captioner; from PIL import Image; "
    script += "Captioner.from_pretrained(sys.argv[1]).caption(Image.new('RGB', (40, 30), 'teal'), num_beams=1)"
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", script, str(tmp_path / "int8")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecated" not in done.stderr, done.stderr[-2000:]


def test_int8_export_of_a_trained_model_writes_the_fp32_captions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny model trained 150 steps on the synthetic scenes (12 s on one CPU) writes 10 different captions for the
    60 scenes; its int8 export wrote the same caption for 57 of them when measured. At least 90% must agree."""
    settings = ("train.steps=150", "train.batch_size=8", "train.lr=2e-3", "tokenizer.vocab_size=300")
    train_tiny("vit-gpt2", tmp_path, *settings, "train.eval_every=150", "train.log_every=150", "train.threads=1")
    code, _, err = run_cli(["export", "int8", "--model", tmp_path / "model", "--output", tmp_path / "int8"], capsys)
    assert code == 0, err
    images = sorted((tmp_path / "scenes" / "images").rglob("*.png"))
    fp32 = [r.caption for r in Captioner.from_pretrained(tmp_path / "model", device="cpu").caption(images, num_beams=1)]
    int8 = [r.caption for r in Captioner.from_pretrained(tmp_path / "int8").caption(images, num_beams=1)]
    assert len(images) == 60 and len(set(fp32)) >= 5  # the model tells the scenes apart: agreement is not trivial
    assert sum(a == b for a, b in zip(fp32, int8, strict=True)) / len(images) >= 0.9


def test_torchao_backend_without_torchao_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("captionkit.export.int8.torchao_installed", lambda: False)  # as where it is not installed
    source = save_tiny_model(tmp_path / "fp32")
    args = ["export", "int8", "--model", source, "--output", tmp_path / "int8", "--backend", "torchao"]
    code, _, err = run_cli(args, capsys)
    # The flag is named, as for an unknown backend (it said "backend:").
    assert (code, err.strip()) == (
        1,
        "captionkit: error: --backend: torchao is not installed (pip install 'captionkit[int8]')",
    )
    assert not (tmp_path / "int8").exists()  # nothing half-written


def test_unknown_quantization_file_is_a_load_error(tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "model")
    (source / QUANTIZATION_FILE).write_text('{"method": "int4-magic"}')
    with pytest.raises(Exception, match="unknown quantization method"):
        Captioner.from_pretrained(source)
    (source / QUANTIZATION_FILE).write_text('{"method": ' + "9" * 5000 + "}")
    with pytest.raises(ModelLoadError, match=r"quantization\.json: invalid JSON: a number longer than 4300 digits$"):
        Captioner.from_pretrained(source)


def test_the_export_functions_refuse_to_write_over_a_model(tmp_path: Path) -> None:
    """Called from Python (the CLI checks first): an export into its own checkpoint would delete (int8) or bury
    (ONNX) the fp32 weights, and one over another kind of export would load as that export."""
    from captionkit.errors import InputError
    from captionkit.export.onnx import export_onnx

    source = save_tiny_model(tmp_path / "fp32")
    files = sorted(path.name for path in source.iterdir())
    for export in (export_int8, export_onnx):
        with pytest.raises(InputError) as raised:
            export(source, source)
        assert str(raised.value) == f"{source}: is the model being exported; choose a new directory"
    assert sorted(path.name for path in source.iterdir()) == files
    export_onnx(source, tmp_path / "onnx")
    export_int8(source, tmp_path / "int8")
    with pytest.raises(InputError) as raised:
        export_int8(source, tmp_path / "onnx")
    assert str(raised.value) == (
        f"{tmp_path / 'onnx'}: holds an ONNX export (onnx_config.json); export into a new or empty directory"
    )
    with pytest.raises(InputError, match=r"holds an int8 export \(quantization\.json\)"):
        export_onnx(source, tmp_path / "int8")
    assert Captioner.from_pretrained(source).model.family == "vit-gpt2"


@pytest.mark.parametrize("kind", ["int8", "onnx"])
def test_the_cli_refuses_the_model_as_output_before_loading_it(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI asks the export's own rule (the same directory, however spelt: here a link to it) before any load."""
    from captionkit.parts import CaptionerParts

    source = save_tiny_model(tmp_path / "fp32")
    files = {path.name: path.read_bytes() for path in source.iterdir()}
    link = tmp_path / "link"
    link.symlink_to(source, target_is_directory=True)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before --output was checked")

    monkeypatch.setattr(CaptionerParts, "load", never)
    code, out, err = run_cli(["export", kind, "--model", source, "--output", link], capsys)
    assert (code, out, err.strip()) == (
        1,
        "",
        f"captionkit: error: --output: {link} is the model being exported; choose a new directory",
    )
    assert {path.name: path.read_bytes() for path in source.iterdir()} == files


def test_the_export_functions_print_no_progress_bars(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """From Python as from the CLI: reading the checkpoint printed transformers' "Loading weights" bar."""
    from captionkit.export.onnx import export_onnx

    source = save_tiny_model(tmp_path / "fp32")
    capfd.readouterr()
    export_int8(source, tmp_path / "int8")
    export_onnx(source, tmp_path / "onnx")
    assert capfd.readouterr() == ("", "")


def test_the_export_functions_refuse_another_models_checkpoint(tmp_path: Path) -> None:
    """From Python (the CLI refuses any non-empty --output): an int8 export over another checkpoint deleted its
    weights, an ONNX one made it load as the export. An export of the same kind may still be written again."""
    from captionkit.errors import InputError
    from captionkit.export.onnx import export_onnx

    source = save_tiny_model(tmp_path / "fp32")
    other = save_tiny_model(tmp_path / "other", seed=1)
    files = {path.name: path.read_bytes() for path in other.iterdir()}
    for export in (export_int8, export_onnx):
        with pytest.raises(InputError) as raised:
            export(source, other)
        assert str(raised.value) == f"{other}: holds a model (config.json); export into a new or empty directory"
    assert {path.name: path.read_bytes() for path in other.iterdir()} == files
    (tmp_path / "weights only").mkdir()
    (tmp_path / "weights only" / "model.safetensors").write_bytes(files["model.safetensors"])
    with pytest.raises(InputError, match=r"holds a model \(model\.safetensors\)"):
        export_int8(source, tmp_path / "weights only")
    for export, name in ((export_int8, "int8"), (export_onnx, "onnx")):
        export(source, tmp_path / name)
        export(source, tmp_path / name)  # written again over itself
    assert Captioner.from_pretrained(tmp_path / "int8").caption(Image.new("RGB", (40, 30), "teal"), num_beams=1)


def test_the_int8_weights_get_the_mode_a_new_file_gets(tmp_path: Path) -> None:
    """safetensors writes through a private temporary file: model.int8.safetensors was 0600 beside 0644 files."""
    import os

    source = save_tiny_model(tmp_path / "fp32")
    before = os.umask(0o022)
    try:
        export_int8(source, tmp_path / "int8")
    finally:
        os.umask(before)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "int8").iterdir()}
    assert modes["model.int8.safetensors"] == 0o644
    assert set(modes.values()) == {0o644}
