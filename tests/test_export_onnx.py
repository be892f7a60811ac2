"""ONNX export: three graphs run by onnxruntime through the decoding engine, token-identical to PyTorch."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from _data import real_photos
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig, generate
from captionkit.errors import ModelLoadError
from captionkit.export.onnx import GRAPHS, OnnxCaptionModel, export_onnx, export_onnx_graphs

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

    photos = real_photos(3)
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


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx_export")
    export_onnx(save_tiny_model(root / "fp32"), root / "onnx")
    return root / "onnx"


def _edit_json(name: str, **changes: Any) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        path = directory / name
        path.write_text(json.dumps(json.loads(path.read_text()) | changes))

    return edit


def _cut_short(directory: Path) -> None:
    (directory / "decoder.onnx").write_bytes((directory / "decoder.onnx").read_bytes()[:500])


def _encoder_as_decoder(directory: Path) -> None:
    shutil.copyfile(directory / "encoder.onnx", directory / "decoder.onnx")


DECODER_SIGNATURE = "(input_ids, position, past_keys, past_values, cross_keys, cross_values) -> (logits, keys, values)"
# A damaged or mismatched ONNX export: (damage, the file named, the reason).
DAMAGES = {
    "graph cut short": (_cut_short, "decoder.onnx", "unreadable ONNX graph ([ONNXRuntimeError] : 7 : INVALID_PROTOBUF"),
    "graph copied over another": (
        _encoder_as_decoder,
        "decoder.onnx",
        f"not the decoder graph of an ONNX export: it maps (pixel_values) -> (tokens), expected {DECODER_SIGNATURE}",
    ),
    "setting of the wrong type": (
        _edit_json("onnx_config.json", vocab_size="290"),
        "onnx_config.json",
        "vocab_size: must be a whole number >= 1, got '290'",
    ),
    "boolean setting": (
        _edit_json("onnx_config.json", layers=True),
        "onnx_config.json",
        "layers: must be a whole number >= 1, got True",
    ),
    "other layer count": (
        _edit_json("onnx_config.json", layers=3),
        "cross.onnx",
        "cross_keys has 2 on axis 0 where onnx_config.json says 3: a mismatched export",
    ),
    "other vocabulary": (
        _edit_json("onnx_config.json", vocab_size=300),
        "decoder.onnx",
        "logits has 290 on axis 1 where onnx_config.json says 300: a mismatched export",
    ),
    "other image size": (
        _edit_json("preprocessor_config.json", size={"height": 48, "width": 48}),
        "encoder.onnx",
        "takes 32x32 images but the preprocessing gives 48x48: a mismatched export",
    ),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_onnx_export_is_one_line_naming_the_file(
    damage: str, onnx_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused when it loads, not with onnxruntime's traceback (or a TypeError) in the middle of decoding."""
    edit, name, reason = DAMAGES[damage]
    export = Path(shutil.copytree(onnx_export, tmp_path / "onnx"))
    edit(export)
    photo = real_photos(1)[0]
    code, out, err = run_cli(["caption", photo, "--model", export], capsys)
    assert (code, out) == (1, "")
    assert len(err.strip().splitlines()) == 1
    assert err.strip().startswith(f"captionkit: error: {export / name}: {reason}")
    with pytest.raises(ModelLoadError, match="^" + str(export / name)):
        Captioner.from_pretrained(export)


def test_a_settings_file_that_is_no_object_is_a_load_error(onnx_export: Path, tmp_path: Path) -> None:
    export = Path(shutil.copytree(onnx_export, tmp_path / "onnx"))
    (export / "onnx_config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError) as error:
        OnnxCaptionModel(export)
    assert str(error.value) == f"{export / 'onnx_config.json'}: unreadable ONNX export settings (not a JSON object)"


def test_export_without_the_onnx_package_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's exporter needs onnx: it failed with a traceback after writing the tokenizer and preprocessing."""
    source = save_tiny_model(tmp_path / "model")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as where it is not installed: importing it fails
    code, out, err = run_cli(["export", "onnx", "--model", source, "--output", tmp_path / "onnx"], capsys)
    assert (code, out, err.strip()) == (
        1,
        "",
        "captionkit: error: export onnx: needs the onnx package (pip install 'captionkit[onnx]')",
    )
    assert not (tmp_path / "onnx").exists()


def test_onnxruntime_runs_as_many_threads_as_torch(
    onnx_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``caption --threads N`` (torch's setting) held for PyTorch models only: onnxruntime took all the cores."""
    threads = []
    original = OnnxCaptionModel.__init__

    def spy(self: OnnxCaptionModel, directory: Path, threads_given: int | None = None) -> None:
        original(self, directory, threads_given)
        threads.extend(s.get_session_options().intra_op_num_threads for s in self.sessions.values())

    monkeypatch.setattr(OnnxCaptionModel, "__init__", spy)
    photo = real_photos(1)[0]
    args = ["caption", photo, "--model", onnx_export, "--threads", "2", "--beams", "1", "--max-length", "3"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert threads == [2, 2, 2] and torch.get_num_threads() == 1  # the caller's setting comes back afterwards
    threads.clear()
    Captioner.from_onnx(onnx_export, threads=3)
    assert threads == [3, 3, 3]


def test_loading_an_export_reads_its_preprocessing_once(onnx_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from captionkit.images import Preprocessing
    from captionkit.loading import load_pretrained

    read = []
    original = Preprocessing.load.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Preprocessing, "load", classmethod(lambda cls, path: read.append(path) or original(cls, path)))
    parts = load_pretrained(onnx_export, onnx_threads=1)
    assert read == [onnx_export]
    assert parts.preprocessing.size == (32, 32)


def test_onnx_export_of_a_wider_clip_encoder_decodes_as_pytorch(tmp_path: Path, make_pixels: Callable) -> None:
    """A captioner built from parts: a CLIP vision tower 48 wide (so a projection to GPT-2's 32) and a style's
    start token instead of bos; captions forced to full length, so that every step's tokens are compared."""
    from _hub_parts import save_clip, save_gpt2
    from captionkit.models.registry import create_model
    from captionkit.parts import load_tokenizer
    from captionkit.training.checkpoint import save_checkpoint

    gpt2 = save_gpt2(tmp_path / "gpt2", "t4")
    model = create_model("vit-gpt2", "tiny", None, encoder=str(save_clip(tmp_path / "clip", "t4")), decoder=str(gpt2))
    assert hasattr(model.ved, "enc_to_dec_proj")
    source = save_checkpoint(tmp_path / "run", model, load_tokenizer(model, gpt2), model.preprocessing)
    export_onnx(source, tmp_path / "onnx")
    onnx_model = OnnxCaptionModel(tmp_path / "onnx", threads=1)
    pixels = make_pixels(3, 5)
    for beams in (1, 3):
        config = DecodingConfig(
            max_new_tokens=6, min_new_tokens=6, num_beams=beams, num_return_sequences=beams, start_token_id=7
        )
        ours = [[h.token_ids for h in found] for found in generate(model, pixels, config=config)]
        assert [[h.token_ids for h in found] for found in generate(onnx_model, pixels, config=config)] == ours
        assert {len(ids) for found in ours for ids in found} == {6}
