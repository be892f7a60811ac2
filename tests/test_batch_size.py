"""``--batch-size auto``: parsing, the CPU choice, and the caption command taking it."""

from __future__ import annotations

import json

import pytest
import torch

from _captioning import PHOTO_DIRS
from _helpers import run_cli, save_tiny_model
from captionkit.decoding import DecodingConfig
from captionkit.errors import InputError
from captionkit.jobs.batch_size import CPU_BATCH, choose_batch_size, parse_batch_size
from captionkit.models.registry import load_model

PHOTOS = sorted(PHOTO_DIRS[1].glob("*.jpg"))[:3]


def test_parse_batch_size() -> None:
    assert [parse_batch_size(text) for text in ("1", "256", "auto", " AUTO ")] == [1, 256, None, None]
    for text in ("0", "-3", "many", ""):
        with pytest.raises(InputError, match=rf"^--batch-size: must be at least 1 or auto, got {text!r}$"):
            parse_batch_size(text)


def test_auto_on_a_cpu_is_the_documented_default(tmp_path) -> None:
    model = load_model(save_tiny_model(tmp_path / "vit"))
    config = DecodingConfig(num_beams=4)
    assert choose_batch_size(model, (32, 32), config, torch.device("cpu")) == CPU_BATCH == 8


def test_caption_cli_batch_size_auto(tmp_path, capsys) -> None:
    model_dir = save_tiny_model(tmp_path / "vit")
    output = tmp_path / "out.jsonl"
    args = ["caption", *PHOTOS, "--model", model_dir, "--device", "cpu", "--max-length", "4", "--output", output]
    code, _out, err = run_cli([*args, "--batch-size", "auto"], capsys)
    assert code == 0 and "--batch-size auto: 8" in err
    assert [json.loads(line)["image"] for line in output.read_text().splitlines()] == [str(p) for p in PHOTOS]
    code, _out, err = run_cli([*args, "--batch-size", "0"], capsys)
    assert (code, err.strip()) == (1, "captionkit: error: --batch-size: must be at least 1 or auto, got '0'")
