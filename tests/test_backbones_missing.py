"""timm and torchvision backbones without their extras installed: one line naming the extra, exit 1.

The main venv has neither library (tests/test_backbones.py runs with both, in make test-vision's .venv-vision);
setting the module to None in sys.modules makes its import fail in either venv, as an absent one does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from _helpers import run_cli, tiny_model
from _recipes import FLICKR
from captionkit.errors import ModelLoadError
from captionkit.models.registry import create_model, load_model


@pytest.fixture
def without_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("timm", "torchvision"):
        monkeypatch.setitem(sys.modules, name, None)


def _timm_layout(directory: Path) -> Path:
    """timm's hub config.json (timm/resnet18.a1_in1k's fields, shortened): enough to tell that timm is needed."""
    directory.mkdir()
    config = {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {"input_size": [3, 224, 224]}}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.mark.usefixtures("without_extras")
@pytest.mark.parametrize(
    ("encoder", "extra"),
    [
        ("timm:vit_base_patch16_224", "timm"),
        ("torchvision:resnet50", "torchvision"),
        ("torchvision:resnet18@w.pth", "torchvision"),
    ],
)
def test_a_backbone_without_its_library_is_one_line_naming_the_extra(encoder: str, extra: str) -> None:
    with pytest.raises(ModelLoadError) as raised:
        create_model("cnn-lstm", encoder=encoder, vocab_size=50)
    assert str(raised.value) == f"{encoder}: needs {extra}: pip install 'captionkit[{extra}]'"


@pytest.mark.usefixtures("without_extras")
def test_a_directory_in_timms_layout_without_timm(tmp_path: Path) -> None:
    directory = _timm_layout(tmp_path / "resnet18")
    with pytest.raises(ModelLoadError) as raised:
        create_model("prefix-gpt2", encoder=str(directory), decoder="gpt2")
    assert str(raised.value) == f"{directory}: needs timm: pip install 'captionkit[timm]'"


@pytest.mark.usefixtures("without_extras")
def test_the_recipe_with_a_torchvision_backbone_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "flickr30k-resnet50-lstm", "--output", tmp_path / "run", "--no-progress"]
    args += ["--set", "model.encoder=torchvision:resnet50", "--set", f"data.train={FLICKR}", "--set", "data.workers=0"]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "captionkit: error: torchvision:resnet50: needs torchvision: pip install 'captionkit[torchvision]'"
    ]
    assert not (tmp_path / "run" / "COMPLETE").exists()


@pytest.mark.usefixtures("without_extras")
def test_a_run_on_a_timm_backbone_does_not_load_without_timm(tmp_path: Path) -> None:
    tiny_model("cnn-lstm").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    part = {"library": "timm", "architecture": "resnet18", "model_args": {}, "num_features": 512}
    saved["config"]["encoder_part"] = part
    (tmp_path / "config.json").write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(ModelLoadError) as raised:
        load_model(tmp_path)
    assert str(raised.value) == f"{tmp_path}: needs timm: pip install 'captionkit[timm]'"
