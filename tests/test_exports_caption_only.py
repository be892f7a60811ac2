"""Exports (int8, ONNX) are for captioning: training from one, or exporting one again, is refused in one line that
names the export and says to use the checkpoint it came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from _helpers import run_cli, save_tiny_model
from _recipes import SENTICAP
from captionkit.errors import ModelLoadError
from captionkit.parts import CaptionerParts

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from captionkit.export.int8 import export_int8
    from captionkit.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("exports")
    source = save_tiny_model(folder / "model")
    export_int8(source, folder / "int8")
    export_onnx(source, folder / "onnx")
    return {"int8": folder / "int8", "ONNX": folder / "onnx"}


@pytest.mark.parametrize(("kind", "marker"), [("int8", "quantization.json"), ("ONNX", "onnx_config.json")])
def test_the_plain_checkpoint_loader_refuses_an_export(exports: dict[str, Path], kind: str, marker: str) -> None:
    with pytest.raises(ModelLoadError) as refused:
        CaptionerParts.load(exports[kind])
    assert str(refused.value) == (
        f"{exports[kind]}: is an {kind} export ({marker}), for captioning only: use the checkpoint it was exported from"
    )


@pytest.mark.parametrize("kind", ["int8", "ONNX"])
def test_training_from_an_export_fails_in_one_line(
    exports: dict[str, Path], kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "senticap-vit-gpt2", "--output", tmp_path / "run"]
    settings = [f"model.pretrained={exports[kind]}", f"data.train={SENTICAP}", "train.precision=bf16"]
    code, _, err = run_cli([*args, *(a for s in settings for a in ("--set", s))], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"captionkit: error: {exports[kind]}: is an {kind} export "
        f"({'quantization.json' if kind == 'int8' else 'onnx_config.json'}), for captioning only: "
        "use the checkpoint it was exported from"
    ]
    assert not (tmp_path / "run" / "model").exists()


def test_an_export_is_not_exported_again(
    exports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["export", "onnx", "--model", exports["int8"], "--output", tmp_path / "o"], capsys)
    assert code == 1 and "is an int8 export (quantization.json), for captioning only" in err
    code, _, err = run_cli(["export", "int8", "--model", exports["ONNX"], "--output", tmp_path / "i"], capsys)
    assert code == 1 and "is an ONNX export (onnx_config.json), for captioning only" in err
