"""Pretrained parts and hub checkpoints stored in half precision (fp16 or bf16 weights, ``torch_dtype`` in a
transformers 4 config.json): a captioner built around them, or loaded to train from, is fp32 with every weight exactly
the stored one, and it runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from _hub_models import hub_layout
from _hub_parts import part_weights, save_gpt2, save_vit, save_vit_gpt2_t4
from captionkit.models.base import CaptionModel
from captionkit.models.registry import create_model
from captionkit.parts import CaptionerParts

pytestmark = pytest.mark.usefixtures("single_thread")


def _as_half(directory: Path, dtype: torch.dtype) -> Path:
    """Rewrite a "t4" part as a half-precision upload: its weights in ``dtype``, its config.json saying so."""
    weights = {key: tensor.to(dtype).contiguous() for key, tensor in part_weights(directory).items()}
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def _assert_fp32_and_unchanged(model: CaptionModel, encoder: Path, decoder: Path, run: Path) -> None:
    """Every parameter fp32; every tensor of the parts saved unchanged (upcast), under the hub's names."""
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    model.save_pretrained(run)
    saved = part_weights(run)
    for prefix, part in (("encoder.", encoder), ("decoder.transformer.", decoder)):
        for key, tensor in part_weights(part).items():
            assert torch.equal(saved[prefix + key.removeprefix("transformer.")], tensor.float()), key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("half", ["encoder", "decoder"])
def test_a_half_precision_part_makes_an_fp32_captioner_that_runs(half: str, dtype: torch.dtype, tmp_path: Path) -> None:
    """A half part came in half beside fp32 layers: the first forward failed with "mat1 and mat2 must have the same
    dtype, but got Float and Half"."""
    encoder, decoder = save_vit(tmp_path / "vit"), save_gpt2(tmp_path / "gpt2")
    _as_half(encoder if half == "encoder" else decoder, dtype)
    for family in ("vit-gpt2", "prefix-gpt2"):
        model = create_model(family, encoder=str(encoder), decoder=str(decoder))
        if family == "vit-gpt2":
            _assert_fp32_and_unchanged(model, encoder, decoder, tmp_path / "run")
        with torch.no_grad():
            logits = model(torch.randn(2, 3, 32, 32), torch.tensor([[0, 5, 6], [0, 7, 8]]))
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["vit-gpt2", "blip", "git"])
def test_a_half_precision_hub_checkpoint_loads_in_fp32_for_training(family: str, tmp_path: Path) -> None:
    """``model.pretrained`` naming an fp16 upload: read as stored, its first bf16-autocast training step failed with
    "Unexpected floating ScalarType in at::autocast::prioritize" (a traceback)."""
    if family == "vit-gpt2":
        run = save_vit_gpt2_t4(tmp_path / "run", save_vit(tmp_path / "vit"), save_gpt2(tmp_path / "gpt2"))
    else:
        run = tmp_path / "run"
        hub_layout(family, run, legacy=True)
    stored = part_weights(run)
    _as_half(run, torch.float16)
    model = CaptionerParts.load(run).model
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    model.save_pretrained(tmp_path / "saved")
    saved = part_weights(tmp_path / "saved")
    assert all(torch.equal(saved[key], tensor.half().float()) for key, tensor in stored.items() if key in saved)
    ids = torch.tensor([[model.bos_token_id, 5, 6], [model.bos_token_id, 7, 8]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 32, 32), ids)
    logits.float().logsumexp(-1).mean().backward()
