"""The one loader (captionkit.loading): checkpoints of every family, int8 and ONNX exports, hub ids offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _captioning import PHOTO_DIRS
from _helpers import FAMILIES, run_cli, run_cli_process, save_tiny_model
from captionkit import Captioner
from captionkit.errors import ModelLoadError
from captionkit.export.onnx import OnnxCaptionModel
from captionkit.loading import load_pretrained

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = sorted(PHOTO_DIRS[0].glob("*.jpg"))[:2]


def test_a_checkpoint_loads_with_its_tokenizer_and_preprocessing(tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "model")
    loaded = load_pretrained(source)
    assert (loaded.model.family, loaded.source, loaded.cpu_only) == ("vit-gpt2", source, False)
    assert loaded.preprocessing.size == (32, 32)
    assert loaded.tokenizer.vocab_size == loaded.model.vocab_size
    ids = (loaded.model.bos_token_id, loaded.model.eos_token_id, loaded.model.pad_token_id)
    assert (loaded.tokenizer.bos_token_id, loaded.tokenizer.eos_token_id, loaded.tokenizer.pad_token_id) == ids


def test_int8_and_onnx_exports_load_through_the_captioner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_tiny_model(tmp_path / "model")
    for kind in ("int8", "onnx"):
        code, _, err = run_cli(["export", kind, "--model", source, "--output", tmp_path / kind], capsys)
        assert code == 0, err
    reference = Captioner.from_pretrained(source, device="cpu").caption(PHOTOS, num_beams=2, max_new_tokens=6)
    onnx = Captioner.from_pretrained(tmp_path / "onnx")
    assert isinstance(onnx.model, OnnxCaptionModel) and onnx.device == torch.device("cpu")
    found = onnx.caption(PHOTOS, num_beams=2, max_new_tokens=6)
    assert [r.captions[0].token_ids for r in found] == [r.captions[0].token_ids for r in reference]
    int8 = load_pretrained(tmp_path / "int8")
    assert int8.cpu_only and Captioner.from_pretrained(tmp_path / "int8").device == torch.device("cpu")


def test_a_hub_id_offline_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as error:
        load_pretrained("captionkit-test/no-such-captioner")
    assert str(error.value) == (
        "captionkit-test/no-such-captioner: not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    )


@pytest.mark.parametrize(
    "environment",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
    ids=["offline", "unreachable"],
)
def test_the_cli_names_an_unloadable_hub_id_in_one_line(environment: dict[str, str], tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), **environment}
    done = run_cli_process(["caption", PHOTOS[0], "--model", "captionkit-test/none"], env, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("captionkit: error: captionkit-test/none: "), done.stderr
    assert "Traceback" not in done.stderr


HOSTILE_CONFIGS = {
    "deep": ("[" * 1500 + "]" * 1500, "invalid JSON: nested more than 64 levels deep"),
    "bigint": ('{"model_type": ' + "9" * 5000 + "}", "invalid JSON: a number longer than 4300 digits"),
    "nan": ('{"model_type": NaN}', "invalid JSON: NaN is not a JSON number"),
    "list": ("[1, 2]", "is not a JSON object"),
    "latin-1": (b'{"model_type": "caf\xe9"}', "unreadable config: 'utf-8' codec can't decode byte 0xe9"),
}


@pytest.mark.parametrize("family", ["vit-gpt2", "cnn-lstm"])
@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_a_hostile_config_json_is_one_model_load_error_naming_the_file(family: str, case: str, tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "model", family)
    text, reason = HOSTILE_CONFIGS[case]
    config_file = source / "config.json"
    config_file.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ModelLoadError) as error:
        Captioner.from_pretrained(source, device="cpu")
    assert error.value.source == str(config_file)
    assert error.value.reason.startswith(reason) and "\n" not in str(error.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_cut_short_are_one_model_load_error_naming_the_file(family: str, tmp_path: Path) -> None:
    source = save_tiny_model(tmp_path / "model", family)
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a download or copy cut short
    with pytest.raises(ModelLoadError) as error:
        Captioner.from_pretrained(source, device="cpu")
    assert error.value.source == str(source)
    assert (
        error.value.reason
        == "model.safetensors: unreadable weights (Error while deserializing header: invalid header length)"
    )


def test_the_cli_refuses_a_hostile_config_json_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_tiny_model(tmp_path / "model")
    (source / "config.json").write_text("[" * 1500 + "]" * 1500)
    capsys.readouterr()  # saving's own progress output
    code, out, err = run_cli(["caption", PHOTOS[0], "--model", source], capsys)
    expected = f"captionkit: error: {source / 'config.json'}: invalid JSON: nested more than 64 levels deep"
    assert (code, out, err.strip()) == (1, "", expected)


def test_loading_shows_no_transformers_progress_bars(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    directory = save_tiny_model(tmp_path / "m")
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    Captioner.from_pretrained(directory)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting comes back
