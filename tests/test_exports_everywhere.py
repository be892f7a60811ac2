"""An ONNX or int8 export directory works wherever a model directory does: `caption`, `compare`, `evaluate`,
`serve` (its app, as `captionkit serve` builds it) and `Captioner.from_pretrained`; int8 weights are stored as int8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from _data import real_photos
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.errors import InputError
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = real_photos(2)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    source = save_tiny_model(root / "fp32")
    for kind in ("onnx", "int8"):
        with pytest.raises(SystemExit) as done:
            from captionkit.cli import main

            main(["export", kind, "--model", str(source), "--output", str(root / kind)])
        assert done.value.code in (0, None)
    return {"fp32": source, "onnx": root / "onnx", "int8": root / "int8"}


def _greedy(captioner: Captioner) -> list[str]:
    return [r.caption for r in captioner.caption(PHOTOS, num_beams=1, max_new_tokens=6)]


def test_from_pretrained_loads_an_onnx_export(dirs: dict[str, Path]) -> None:
    onnx = Captioner.from_pretrained(dirs["onnx"])
    assert type(onnx.model).__name__ == "OnnxCaptionModel"
    assert _greedy(onnx) == _greedy(Captioner.from_pretrained(dirs["fp32"]))


def test_caption_compare_and_evaluate_take_an_onnx_export(dirs, tmp_path, capsys) -> None:
    expected = _greedy(Captioner.from_pretrained(dirs["fp32"]))
    code, out, err = run_cli(["caption", *PHOTOS, "--model", dirs["onnx"], "--beams", "1", "--max-length", "6"], capsys)
    assert code == 0, err
    assert [json.loads(line)["caption"] for line in out.splitlines()] == expected
    args = ["compare", *PHOTOS, "--model", f"onnx={dirs['onnx']}", "--model", f"fp32={dirs['fp32']}"]
    code, out, err = run_cli([*args, "--beams", "1", "--max-length", "6"], capsys)
    assert code == 0, err
    records = [json.loads(line)["captions"] for line in out.splitlines()]
    assert [r["onnx"] for r in records] == [r["fp32"] for r in records] == expected
    scenes = write_synthetic_dataset(tmp_path / "scenes", 4, 2, 3, seed=0, image_size=32)
    metrics = {}
    for kind in ("onnx", "fp32"):
        args = ["evaluate", "--model", dirs[kind], "--data", scenes, "--beams", "1", "--metrics", "BLEU,CIDEr"]
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        metrics[kind] = json.loads(out)
    assert metrics["onnx"]["images"] == 3
    assert metrics["onnx"]["CIDEr"] == pytest.approx(metrics["fp32"]["CIDEr"], abs=1e-6)
    assert metrics["onnx"]["perplexity"] == pytest.approx(metrics["fp32"]["perplexity"], rel=1e-4)


@pytest.mark.parametrize("kind", ["int8", "onnx"])
def test_an_export_runs_on_the_cpu_only_and_is_not_saved_again(dirs, kind, tmp_path, monkeypatch) -> None:
    """Its int8 layers (or onnxruntime session) run on the CPU: a GPU asked for is one line, not a failure in the
    middle of decoding; saving it as a checkpoint is one line too (it was a traceback from transformers)."""
    captioner = Captioner.from_pretrained(dirs[kind])
    assert captioner.export == {"int8": "int8", "onnx": "ONNX"}[kind]
    assert Captioner.from_pretrained(dirs["fp32"]).export is None
    with pytest.raises(InputError) as refused:
        captioner.save_pretrained(tmp_path / "copy")
    assert str(refused.value) == (
        f"{dirs[kind]}: is an {captioner.export} export: it cannot be saved as a checkpoint; copy its directory, or "
        "save the checkpoint it was exported from"
    )
    assert not (tmp_path / "copy").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the check can tell
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError) as refused:
        Captioner.from_pretrained(dirs[kind], device="cuda")
    article = "an ONNX" if kind == "onnx" else "an int8"
    assert str(refused.value) == f"device: {dirs[kind]} is {article} export: it runs on the CPU only, got cuda"
    assert Captioner.from_pretrained(dirs[kind]).device.type == "cpu"  # no device given: the CPU, GPU or not
    with pytest.raises(InputError) as refused:
        Captioner.from_pretrained(dirs[kind], dtype="bf16")  # read as stored: half precision is no export's
    assert str(refused.value) == f"dtype: {dirs[kind]} is {article} export: it runs in fp32 only"


def test_serve_lists_exports_with_their_true_parameter_counts(dirs: dict[str, Path]) -> None:
    captioners = {kind: Captioner.from_pretrained(path) for kind, path in dirs.items()}
    fp32_count = sum(p.numel() for p in captioners["fp32"].model.parameters())
    with TestClient(create_app(captioners, ServeSettings(max_wait_ms=0))) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed["int8"]["parameters"] == listed["fp32"]["parameters"] == fp32_count
        response = client.post(
            "/v1/captions",
            files={"image": ("a.jpg", PHOTOS[0].read_bytes(), "image/jpeg")},
            data={"model": "onnx", "num_beams": "1", "max_length": "6"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["caption"] == _greedy(captioners["fp32"])[0]


def test_an_onnx_export_counts_the_parameters_of_its_model(dirs: dict[str, Path]) -> None:
    """Its weights live in the graphs, not in torch parameters: the export records the fp32 model's count, which
    ``num_parameters`` and ``GET /v1/models`` report (they said 0)."""
    fp32_count = sum(p.numel() for p in Captioner.from_pretrained(dirs["fp32"]).model.parameters())
    assert json.loads((dirs["onnx"] / "onnx_config.json").read_text())["parameters"] == fp32_count
    onnx = Captioner.from_pretrained(dirs["onnx"])
    assert onnx.num_parameters == fp32_count
    with TestClient(create_app({"onnx": onnx}, ServeSettings(max_wait_ms=0))) as client:
        assert client.get("/v1/models").json()["models"][0]["parameters"] == fp32_count
