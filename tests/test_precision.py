"""--dtype / ``Captioner.from_pretrained(dtype=...)``: weights cast on load, fp16 refused on the CPU, in every command
that loads a captioner (caption, evaluate, compare, serve) with the one error prefix ``--dtype:``."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest
import torch

from _captioning import PHOTO_DIRS
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.errors import InputError
from captionkit.precision import dtype_name, model_dtype, resolve_dtype

PHOTOS = sorted(PHOTO_DIRS[0].glob("*.jpg"))[:3]
FP16_ON_CPU = "captionkit: error: --dtype: fp16 needs a GPU; on the CPU use bf16 or fp32"


@pytest.fixture(scope="module", autouse=True)
def real_photos() -> None:
    """Every test here captions PHOTOS: without the data they would pass on nothing."""
    assert len(PHOTOS) == 3, f"expected real photos in {PHOTO_DIRS[0]} (set CAPTIONKIT_DATA)"


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


def test_torch_names_of_the_dtypes_are_taken_in_any_case() -> None:
    """A notebook writes transformers' ``torch_dtype="bfloat16"``: it was refused as an unknown dtype."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    expected = {"float32": torch.float32, "FP32": torch.float32, "BF16": torch.bfloat16, "BFloat16": torch.bfloat16}
    assert {name: resolve_dtype(name, cpu) for name in expected} == expected
    assert [dtype_name(resolve_dtype(name, cpu)) for name in expected] == ["fp32", "fp32", "bf16", "bf16"]
    assert resolve_dtype("float16", gpu) == torch.float16
    with pytest.raises(InputError, match=r"^dtype: fp16 needs a GPU; on the CPU use bf16 or fp32$"):
        resolve_dtype("Float16", cpu)


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
    for ours in found:
        assert ours.captions[0].attention.shape[0] == len(ours.captions[0].token_ids)
    same = [(ours, theirs) for ours, theirs in zip(found, reference, strict=True) if ours.caption == theirs.caption]
    assert same, "bf16 changed every caption: the score comparison below would check nothing"  # 3 of 3 here
    for ours, theirs in same:
        assert ours.score == pytest.approx(theirs.score, abs=0.1)


def test_fp32_is_the_default_and_identical_to_no_dtype(model_dir) -> None:
    plain = Captioner.from_pretrained(model_dir, device="cpu").caption(PHOTOS, max_new_tokens=6)
    named = Captioner.from_pretrained(model_dir, device="cpu", dtype="fp32").caption(PHOTOS, max_new_tokens=6)
    assert [(r.caption, r.score) for r in plain] == [(r.caption, r.score) for r in named]


def test_caption_cli_dtype(model_dir, tmp_path, capsys) -> None:
    on_cpu = ["--model", model_dir, "--device", "cpu"]
    code, _out, err = run_cli(["caption", PHOTOS[0], *on_cpu, "--dtype", "fp16"], capsys)
    assert (code, err.strip()) == (1, FP16_ON_CPU)
    output = tmp_path / "out.jsonl"
    args = ["caption", *PHOTOS, *on_cpu, "--dtype", "bf16", "--output", output]
    code, _out, _err = run_cli([*args, "--max-length", "4"], capsys)
    assert code == 0 and len(output.read_text().splitlines()) == 3


def coco_file(directory: Path) -> Path:
    """A COCO caption file over PHOTOS, two references each, in the test split."""
    images = [{"id": i, "file_name": str(p), "split": "test"} for i, p in enumerate(PHOTOS)]
    words = ("a dog runs on the grass", "a cat sits on a red couch")
    annotations = [
        {"id": 10 * i + j, "image_id": i, "caption": caption}
        for i in range(len(PHOTOS))
        for j, caption in enumerate(words)
    ]
    path = directory / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_evaluate_cli_dtype(model_dir, tmp_path, capsys) -> None:
    args = ["evaluate", "--model", model_dir, "--data", coco_file(tmp_path), "--device", "cpu"]
    args += ["--metrics", "BLEU,CIDEr", "--beams", "2", "--max-length", "4"]
    code, _out, err = run_cli([*args, "--dtype", "fp16"], capsys)
    assert (code, err.strip().splitlines()[-1]) == (1, FP16_ON_CPU)
    code, out, err = run_cli([*args, "--dtype", "bf16"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["images"] == 3 and metrics["failed_images"] == 0 and metrics["perplexity"] > 1


def test_compare_cli_dtype(model_dir, tmp_path, capsys) -> None:
    other = save_tiny_model(tmp_path / "other", seed=1)
    args = ["compare", *PHOTOS, "--model", f"a={model_dir}", "--model", f"b={other}", "--device", "cpu"]
    args += ["--beams", "2", "--max-length", "4"]
    code, _out, err = run_cli([*args, "--dtype", "fp16"], capsys)
    assert (code, err.strip()) == (1, FP16_ON_CPU)
    code, out, err = run_cli([*args, "--dtype", "bf16"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in PHOTOS]
    assert all(set(r["captions"]) == {"a", "b"} for r in records)


def test_serve_cli_dtype(model_dir, monkeypatch, capsys) -> None:
    """The serve command loads every model in the dtype (uvicorn replaced: the app it gets is checked)."""
    from fastapi.testclient import TestClient  # the serve extra is in the test extras: a broken install fails here

    from captionkit.cli import serve as serve_cli

    served = []
    monkeypatch.setattr(serve_cli, "listening_socket", lambda host, port: socket.socket())
    monkeypatch.setattr(serve_cli, "run_server", lambda app, listener, **options: served.append(app) or True)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)  # pytest keeps its own handlers
    args = ["serve", "--model", f"tiny={model_dir}", "--device", "cpu"]
    code, _out, err = run_cli([*args, "--dtype", "fp16"], capsys)
    assert (code, err.strip().splitlines()[-1]) == (1, FP16_ON_CPU)
    assert served == []
    with pytest.raises(SystemExit) as done:
        from captionkit.cli import main

        main([str(a) for a in [*args, "--dtype", "bf16"]])
    assert done.value.code in (0, None)
    (app,) = served
    with TestClient(app) as client:
        (model,) = client.get("/v1/models").json()["models"]
        files = [("image", ("a.jpg", PHOTOS[0].read_bytes(), "image/jpeg"))]
        response = client.post("/v1/captions", files=files, data={"num_beams": "2", "max_length": "4"})
    assert (model["name"], model["device"], model["dtype"]) == ("tiny", "cpu", "bf16")
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["caption"]


def test_an_unknown_dtype_is_named_by_its_flag(model_dir, capsys) -> None:
    code, _out, err = run_cli(["caption", PHOTOS[0], "--model", model_dir, "--dtype", "float8"], capsys)
    assert (code, err.strip()) == (
        1,
        "captionkit: error: --dtype: unknown dtype 'float8' (expected one of fp32, bf16, fp16)",
    )
