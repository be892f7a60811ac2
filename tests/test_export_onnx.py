"""ONNX export: three graphs run by onnxruntime through the decoding engine, token-identical to PyTorch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from _data import SHARED_DATA
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig, generate
from captionkit.errors import ModelLoadError
from captionkit.export.onnx import GRAPHS, OnnxCaptionModel, export_onnx_graphs

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    from conftest import tiny_vit_gpt2

    model = tiny_vit_gpt2(seed=0)  # captions of mixed lengths: some end with eos, some at the limit
    directory = tmp_path_factory.mktemp("onnx")
    export_onnx_graphs(model, (32, 32), directory)
    return model, directory


@pytest.mark.parametrize("beams", [1, 3])
def test_onnx_captions_equal_pytorch(exported: tuple, make_pixels: Callable, beams: int) -> None:
    model, directory = exported
    onnx_model = OnnxCaptionModel(directory, threads=1)
    pixels = make_pixels(6, 3)
    config = DecodingConfig(max_new_tokens=12, num_beams=beams, num_return_sequences=beams)
    ours = generate(model, pixels, config=config)
    theirs = generate(onnx_model, pixels, config=config)
    assert [[h.token_ids for h in found] for found in theirs] == [[h.token_ids for h in found] for found in ours]
    scores = torch.tensor([h.score for found in theirs for h in found])
    torch.testing.assert_close(scores, torch.tensor([h.score for found in ours for h in found]), rtol=1e-4, atol=1e-4)
    lengths = {len(found[0].token_ids) for found in ours}
    assert len(lengths) > 1 and 12 in lengths  # mixed lengths, and rows dropped or images closed on the way


def test_onnx_sampling_follows_the_seed(exported: tuple, make_pixels: Callable) -> None:
    model, directory = exported
    config = DecodingConfig(max_new_tokens=10, do_sample=True, num_return_sequences=2, seed=3)
    pixels = make_pixels(3, 1)
    ours = generate(model, pixels, config=config)
    theirs = generate(OnnxCaptionModel(directory, threads=1), pixels, config=config)
    assert [[h.token_ids for h in f] for f in theirs] == [[h.token_ids for h in f] for f in ours]


def test_export_onnx_cli_and_captioner_on_real_photos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_tiny_model(tmp_path / "model")
    code, out, err = run_cli(["export", "onnx", "--model", source, "--output", tmp_path / "onnx"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert (info["layers"], info["heads"], info["head_dim"]) == (2, 2, 32)
    assert all((tmp_path / "onnx" / name).is_file() for name in GRAPHS)

    photos = sorted((SHARED_DATA / "coco" / "val2017").glob("*.jpg"))[:3]
    reference = Captioner.from_pretrained(source).caption(photos, num_beams=2, max_new_tokens=8)
    found = Captioner.from_onnx(tmp_path / "onnx", threads=1).caption(photos, num_beams=2, max_new_tokens=8)
    assert [r.captions[0].token_ids for r in found] == [r.captions[0].token_ids for r in reference]
    assert [r.caption for r in found] == [r.caption for r in reference]


def test_not_an_export_is_a_load_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ModelLoadError, match=r"no onnx_config\.json: not an ONNX export"):
        OnnxCaptionModel(tmp_path)
    code, _, err = run_cli(["export", "onnx", "--model", tmp_path / "missing", "--output", tmp_path / "o"], capsys)
    assert code == 1 and "missing" in err
    settings = tmp_path / "onnx_config.json"
    settings.write_text("[" * 1500 + "]" * 1500)
    with pytest.raises(ModelLoadError, match=r"onnx_config\.json: invalid JSON: nested more than 64 levels deep$"):
        OnnxCaptionModel(tmp_path)
    settings.write_text('{"bos_token_id": 1}')
    with pytest.raises(ModelLoadError, match=r"onnx_config\.json: unreadable ONNX export settings \('eos_token_id'\)$"):
        OnnxCaptionModel(tmp_path)
