"""Training end to end on tiny models: checkpoint layout, loading in captionkit and in plain transformers."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, VisionEncoderDecoderModel

from captionkit.api import Captioner
from captionkit.config import load_train_config
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.decoding import DecodingConfig
from captionkit.errors import InputError, ModelLoadError
from captionkit.files import new_file_mode
from captionkit.hub import resolve_model_source
from captionkit.training.checkpoint import is_complete, save_checkpoint
from captionkit.training.loop import train


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 64, 8, 8, seed=0, image_size=32)


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    config = load_train_config(
        None,
        [
            f"data.train={scenes}",
            f"data.val={scenes}",
            "data.first_caption_only=true",
            "data.cache_images=true",
            "model.preset=tiny",
            "tokenizer.vocab_size=300",
            "train.steps=12",
            "train.batch_size=16",
            "train.warmup_steps=2",
            "train.eval_every=6",
            "train.log_every=6",
            "train.lr=3e-3",
        ],
    )
    out = tmp_path_factory.mktemp("run") / "model"
    entries = []
    result = train(config, out, log=entries.append)
    return result, entries


def test_training_lowers_the_loss_and_logs(trained):
    result, entries = trained
    assert result.steps == 12
    assert [e["step"] for e in entries] == [6, 12]
    assert all("val_loss" in e and "val_perplexity" in e for e in entries)
    assert entries[-1]["loss"] < entries[0]["loss"]
    assert entries[-1]["val_loss"] < entries[0]["val_loss"]
    assert result.skipped_samples == 0
    # Where a logged step's time went, measured on that step alone (synchronised only there on a GPU).
    for entry in entries:
        split = entry["step_seconds"]
        assert list(split) == ["data", "forward", "backward", "optimizer"]
        assert all(seconds > 0 for seconds in split.values())
        assert sum(split.values()) < entry["seconds"]
    metrics = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step_seconds"] for m in metrics] == [e["step_seconds"] for e in entries]


def test_every_file_of_the_run_has_the_mode_a_new_file_gets(trained, tmp_path):
    out = trained[0].output_dir
    files = [path for path in out.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"model.safetensors", "training_state.safetensors", "metrics.jsonl"}
    assert {oct(path.stat().st_mode & 0o777) for path in files} == {oct(new_file_mode(tmp_path))}
    before = os.umask(0o027)
    try:
        Captioner.from_pretrained(out).save_pretrained(tmp_path / "saved")
        save_checkpoint(tmp_path / "checkpoint", *_parts(out))
    finally:
        os.umask(before)
    for directory in (tmp_path / "saved", tmp_path / "checkpoint"):
        modes = {path.name: path.stat().st_mode & 0o777 for path in directory.iterdir()}
        assert modes["model.safetensors"] == 0o640 and set(modes.values()) == {0o640}, modes


def _parts(directory):
    captioner = Captioner.from_pretrained(directory)
    return captioner.model, captioner.tokenizer, captioner.preprocessing


def test_checkpoint_layout(trained):
    out = trained[0].output_dir
    names = {p.name for p in out.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"}
    assert expected | {"train_config.json", "trainer_state.json", "COMPLETE"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    assert is_complete(out)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 12
    config = json.loads((out / "config.json").read_text())
    assert config["captionkit"]["family"] == "vit-gpt2"
    assert not list(out.parent.glob(".*tmp*"))  # the staging directory was renamed, not left behind


def test_checkpoint_loads_in_plain_transformers_with_identical_outputs(trained):
    out = trained[0].output_dir
    captioner = Captioner.from_pretrained(out, device="cpu")
    plain = VisionEncoderDecoderModel.from_pretrained(str(out)).eval()
    plain_tokenizer = AutoTokenizer.from_pretrained(str(out))
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    pixels = torch.from_numpy(captioner.preprocessing([image]))
    ours = captioner.caption_pil([image], DecodingConfig(max_new_tokens=8))[0][0]
    theirs = plain.generate(pixels, max_new_tokens=8, num_beams=1, do_sample=False)
    assert plain_tokenizer.decode(theirs[0], skip_special_tokens=True).strip() == ours.caption
    ids = torch.tensor([[captioner.model.bos_token_id, *ours.token_ids[:3]]])
    with torch.no_grad():
        expected = plain(pixel_values=pixels, decoder_input_ids=ids).logits
        got = captioner.model(pixels, ids)
    assert torch.allclose(expected, got, atol=1e-5)


def test_captioner_api_accepts_paths_bytes_and_pil(trained, scenes):
    captioner = Captioner.from_pretrained(trained[0].output_dir, device="cpu")
    image_path = next((scenes.parent / "images" / "test").iterdir())
    results = captioner.caption(
        [image_path, image_path.read_bytes(), Image.open(image_path)], num_beams=2, max_new_tokens=10
    )
    assert len(results) == 3
    assert results[0].caption == results[1].caption == results[2].caption
    assert results[0].image == str(image_path)
    nbest = captioner.caption(image_path, num_beams=3, num_return_sequences=3, max_new_tokens=10)[0]
    assert len(nbest.captions) == 3
    assert nbest.captions[0].score >= nbest.captions[1].score >= nbest.captions[2].score
    # Sampling needs no num_beams=1 from the caller (the beam default applies to beam search only).
    samples = captioner.caption(image_path, do_sample=True, num_return_sequences=4, seed=7, max_new_tokens=10)[0]
    again = captioner.caption(image_path, do_sample=True, num_return_sequences=4, seed=7, max_new_tokens=10)[0]
    assert len(samples.captions) == 4 and [c.caption for c in samples.captions] == [c.caption for c in again.captions]


def test_save_pretrained_round_trip(trained, tmp_path):
    captioner = Captioner.from_pretrained(trained[0].output_dir, device="cpu")
    captioner.save_pretrained(tmp_path / "copy")
    again = Captioner.from_pretrained(tmp_path / "copy", device="cpu")
    image = Image.new("RGB", (32, 32), (20, 200, 30))
    config = DecodingConfig(max_new_tokens=8, num_beams=2)
    assert captioner.caption_pil([image], config)[0][0].caption == again.caption_pil([image], config)[0][0].caption


def test_missing_training_data_is_a_clear_error(tmp_path):
    config = load_train_config(None, [f"data.train={tmp_path / 'nowhere'}"])
    with pytest.raises(InputError, match="no such file"):
        train(config, tmp_path / "out")
    with pytest.raises(InputError, match="no training data"):
        train(load_train_config(None), tmp_path / "out")


def test_model_sources_are_not_guessed(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelLoadError, match="no such directory"):
        resolve_model_source(str(tmp_path / "runs" / "final"))
    with pytest.raises(ModelLoadError, match="not a hub id"):
        resolve_model_source("not a valid id!")
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_source(str(file))


def test_training_through_the_api_shows_no_transformers_progress_bars(scenes, tmp_path, capfd):
    # Checkpoints and the final model are saved with transformers' "Writing model shards" bars off; the caller's
    # setting comes back.
    from transformers.utils import logging as hf_logging

    settings = [f"data.train={scenes}", "model.preset=tiny", "tokenizer.vocab_size=300", "train.steps=2"]
    config = load_train_config(None, [*settings, "train.batch_size=8", "train.checkpoint_every=1"])
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    train(config, tmp_path / "run")
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "it/s]" not in err, err
    assert hf_logging.is_progress_bar_enabled()
