"""--dtype / ``Captioner.from_pretrained(dtype=...)``: weights cast on load, fp16 refused on the CPU."""

from __future__ import annotations

import pytest
import torch

from _captioning import PHOTO_DIRS
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.errors import InputError
from captionkit.precision import model_dtype, resolve_dtype

PHOTOS = sorted(PHOTO_DIRS[0].glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("precision") / "vit")


def test_dtype_names_resolve_and_fp16_is_refused_on_the_cpu() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    resolved = [resolve_dtype(name, cpu) for name in (None, "fp32", "bf16")]
    assert resolved == [torch.float32, torch.float32, torch.bfloat16]
    assert resolve_dtype("fp16", gpu) == torch.float16  # no GPU needed to name it
    with pytest.raises(InputError, match=r"^dtype: fp16 needs a GPU; on the CPU use bf16 or fp32$"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(InputError, match=r"^--dtype: unknown dtype 'float8' \(expected one of fp32, bf16, fp16\)$"):
        resolve_dtype("float8", cpu, "--dtype")


def test_bf16_captioner_casts_weights_and_captions_like_fp32_in_shape(model_dir) -> None:
    fp32 = Captioner.from_pretrained(model_dir, device="cpu")
    bf16 = Captioner.from_pretrained(model_dir, device="cpu", dtype="bf16")
    assert (model_dtype(fp32.model), model_dtype(bf16.model)) == (torch.float32, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters() if p.is_floating_point())
    found = bf16.caption(PHOTOS, num_beams=2, max_new_tokens=5, attention=True)
    reference = fp32.caption(PHOTOS, num_beams=2, max_new_tokens=5)
    assert [r.image for r in found] == [str(p) for p in PHOTOS]
    assert all(1 <= len(r.captions[0].token_ids) <= 5 for r in found)
    # Scores are float32 log-probabilities in every precision; bf16 moves them by rounding only.
    for ours, theirs in zip(found, reference, strict=True):
        assert ours.captions[0].attention.shape[0] == len(ours.captions[0].token_ids)
        if ours.caption == theirs.caption:
            assert ours.score == pytest.approx(theirs.score, abs=0.1)


def test_fp32_is_the_default_and_identical_to_no_dtype(model_dir) -> None:
    plain = Captioner.from_pretrained(model_dir, device="cpu").caption(PHOTOS, max_new_tokens=6)
    named = Captioner.from_pretrained(model_dir, device="cpu", dtype="fp32").caption(PHOTOS, max_new_tokens=6)
    assert [(r.caption, r.score) for r in plain] == [(r.caption, r.score) for r in named]


def test_caption_cli_dtype(model_dir, tmp_path, capsys) -> None:
    on_cpu = ["--model", model_dir, "--device", "cpu"]
    code, _out, err = run_cli(["caption", PHOTOS[0], *on_cpu, "--dtype", "fp16"], capsys)
    assert (code, err.strip()) == (1, "captionkit: error: dtype: fp16 needs a GPU; on the CPU use bf16 or fp32")
    output = tmp_path / "out.jsonl"
    args = ["caption", *PHOTOS, *on_cpu, "--dtype", "bf16", "--output", output]
    code, _out, _err = run_cli([*args, "--max-length", "4"], capsys)
    assert code == 0 and len(output.read_text().splitlines()) == 3
