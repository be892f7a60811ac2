"""timm and torchvision backbones as encoder parts (issue 16): make test-vision runs these in .venv-vision, where
both libraries import; they are deselected elsewhere (marker ``vision``), never skipped.

Each backbone is a tiny random one saved in the layout its library loads (tests/_backbones.py). A model built on
it keeps every backbone tensor but the classifier head, a recipe trains from it with the backbone frozen, and the
run reloads without the network, with the backbone's own eval transform as its preprocessing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _backbones import TIMM_RESNET, TIMM_VIT, save_timm, save_torchvision_resnet18
from _hub_parts import part_weights, save_gpt2
from _recipes import FLICKR, PHOTO, run_recipe
from captionkit import Captioner
from captionkit.errors import ModelLoadError
from captionkit.images import Preprocessing, load_image
from captionkit.models.backbones import torchvision_preprocessing
from captionkit.models.registry import create_model, load_model

pytestmark = [pytest.mark.vision, pytest.mark.usefixtures("single_thread")]

PHOTOS = sorted(PHOTO.parent.glob("*.jpg"))[:5]


@pytest.fixture(scope="module")
def timm_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = dict(TIMM_RESNET)
    return save_timm(tmp_path_factory.mktemp("timm") / "resnet", settings.pop("architecture"), 64, **settings)


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = dict(TIMM_VIT)
    return save_timm(tmp_path_factory.mktemp("timm") / "vit", settings.pop("architecture"), 32, **settings)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gpt2(tmp_path_factory.mktemp("gpt2") / "gpt2", seed=1)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the Hugging Face Hub nor torchvision's download server can be reached, and neither cache holds a
    thing: what loads now loads from the run alone."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # nothing listens on the discard port


def assert_backbone_unchanged(run: Path, backbone: dict[str, torch.Tensor], head: str) -> None:
    """Every backbone tensor (batch-norm statistics too) is in the run under ``encoder.model.``, unchanged; the
    classifier head (``head``) is not."""
    saved = part_weights(run)
    kept = {key: value for key, value in backbone.items() if key.split(".")[0] != head}
    assert len(kept) == len(backbone) - 2  # the head's weight and bias
    for key, tensor in kept.items():
        assert torch.equal(saved[f"encoder.model.{key}"], tensor), key
    assert sorted(key for key in saved if key.startswith("encoder.")) == sorted(f"encoder.model.{key}" for key in kept)


def timm_reference_pixels(directory: Path, images: list[Image.Image]) -> np.ndarray:
    """timm's own eval transform of the part, from its pretrained_cfg, on PIL images."""
    import timm

    pretrained_cfg = json.loads((directory / "config.json").read_text())["pretrained_cfg"]
    transform = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg))
    return np.stack([transform(image).numpy() for image in images])


def assert_centre_crop_rounding_matters(preprocessing: Preprocessing, images: list[Image.Image]) -> None:
    """Rounded down, as transformers' processors do, the odd margins move the crop a pixel: the pixels differ."""
    floor = dataclasses.replace(preprocessing, crop_rounding="floor")
    assert np.abs(floor(images) - preprocessing(images)).max() > 0.1


# --- timm


@pytest.mark.parametrize("family", ["cnn-lstm", "cnn-lstm-attention"])
def test_cnn_lstm_on_a_timm_resnet(timm_resnet: Path, family: str, tmp_path: Path) -> None:
    import timm

    model = create_model(family, encoder=str(timm_resnet), vocab_size=50).eval()
    model.save_pretrained(tmp_path)
    assert_backbone_unchanged(tmp_path, part_weights(timm_resnet), head="fc")
    # Frozen by default, as the Hugging Face ResNet: no gradient, batch norms in eval mode even when training.
    assert not any(parameter.requires_grad for parameter in model.encoder.parameters())
    assert not model.train().encoder.training
    # The regions are timm's last feature map: 512 channels on a 2 x 2 grid (stride 32) of the 64 px crop.
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10, layers=[1, 1, 1, 1]).eval()
    reference.load_state_dict(part_weights(timm_resnet))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.eval().encode(pixels).tokens
        assert tokens.shape == (2, 4, 512)
        assert torch.equal(tokens, reference.forward_features(pixels).flatten(2).transpose(1, 2))
        ids = torch.tensor([[1, 5, 9], [1, 7, 3]])
        assert torch.equal(load_model(tmp_path)(pixels, ids), model(pixels, ids))


def test_the_lstm_attention_recipe_trains_on_a_timm_resnet(
    timm_resnet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    out = tmp_path / "run"
    overrides = [f"model.encoder={timm_resnet}", f"data.train={FLICKR}", "train.lr=0"]
    summary = run_recipe(capsys, "flickr30k-resnet50-lstm-attention.yaml", out, *overrides)
    assert summary["steps"] == 3
    assert_backbone_unchanged(out, part_weights(timm_resnet), head="fc")
    request.getfixturevalue("offline")
    captioner = Captioner.from_pretrained(out, device="cpu")
    # timm's eval transform (shorter edge to 67, centre 64 crop, bicubic, ImageNet mean and std), saved in the run.
    images = [load_image(photo) for photo in PHOTOS]
    expected = timm_reference_pixels(timm_resnet, images)
    assert expected.shape == (5, 3, 64, 64)
    np.testing.assert_allclose(captioner.preprocessing(images), expected, rtol=0, atol=1e-6)
    assert_centre_crop_rounding_matters(captioner.preprocessing, images)
    (result,) = captioner.caption([PHOTO], max_new_tokens=4, num_beams=2, attention=True)
    caption = result.captions[0]
    assert len(caption.token_ids) <= 4
    assert caption.attention is not None and caption.attention.shape == (len(caption.tokens), 2, 2)


def test_prefix_gpt2_on_a_timm_vit(timm_vit: Path, gpt2: Path, tmp_path: Path) -> None:
    import timm

    model = create_model("prefix-gpt2", encoder=str(timm_vit), decoder=str(gpt2)).eval()
    model.save_pretrained(tmp_path)
    assert_backbone_unchanged(tmp_path, part_weights(timm_vit), head="head")
    trainable = {
        group: any(dict(model.named_parameters())[name].requires_grad for name in names)
        for group, names in model.parameter_groups().items()
    }
    assert trainable == {"encoder": False, "mapper": True, "decoder": True}
    # The image embedding is timm's pre-logits feature (the ViT's class token), as ClipCap's seed reads it.
    settings = {key: value for key, value in TIMM_VIT.items() if key != "architecture"}
    reference = timm.create_model(TIMM_VIT["architecture"], pretrained=False, num_classes=10, **settings).eval()
    reference.load_state_dict(part_weights(timm_vit))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(pixels), pre_logits=True)
        assert expected.shape == (2, 192)
        assert torch.equal(model.encode(pixels).tokens[:, 0], expected)
        ids = torch.tensor([[0, 5, 9], [0, 7, 3]])
        assert torch.equal(load_model(tmp_path)(pixels, ids), model(pixels, ids))


def test_the_clipcap_recipe_trains_on_a_timm_vit(
    timm_vit: Path, gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    overrides = [f"model.encoder={timm_vit}", f"model.decoder={gpt2}", f"data.train={FLICKR}", "train.lr=0"]
    summary = run_recipe(capsys, "flickr30k-clipcap.yaml", out, *overrides, "train.warmup_steps=0")
    assert summary["steps"] == 3
    assert_backbone_unchanged(out, part_weights(timm_vit), head="head")
    captioner = Captioner.from_pretrained(out, device="cpu")
    images = [load_image(photo) for photo in PHOTOS]
    # vit_tiny's transform: shorter edge to floor(32 / 0.9) = 35, centre 32 crop, bicubic, mean = std = 0.5.
    np.testing.assert_allclose(captioner.preprocessing(images), timm_reference_pixels(timm_vit, images), atol=1e-6)
    assert captioner.preprocessing.crop_from == 35
    (result,) = captioner.caption([PHOTO], max_new_tokens=4, num_beams=2)
    assert len(result.captions[0].token_ids) <= 4


def test_a_timm_vit_gives_no_lstm_regions(timm_vit: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        create_model("cnn-lstm", encoder=str(timm_vit), vocab_size=50)
    reason = "cannot give the LSTM regions: timm vit_tiny_patch16_224 gives 3-D features, not a (B, C, h, w) map"
    assert str(raised.value) == f"{timm_vit}: {reason}"


@pytest.mark.usefixtures("offline")
def test_a_timm_name_without_the_hub_fails_in_one_line() -> None:
    with pytest.raises(ModelLoadError) as raised:
        create_model("cnn-lstm", encoder="timm:vit_base_patch16_224", vocab_size=50)
    # timm's registry names the hub repository of its default weights.
    hub_id = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert str(raised.value) == f"{hub_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set"


# --- torchvision


def test_the_lstm_recipe_trains_on_a_torchvision_resnet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    from safetensors.torch import load_file
    from torchvision.models import ResNet18_Weights

    weights = save_torchvision_resnet18(tmp_path / "resnet18.safetensors")
    out = tmp_path / "run"
    overrides = [f"model.encoder=torchvision:resnet18@{weights}", f"data.train={FLICKR}", "train.lr=0"]
    assert run_recipe(capsys, "flickr30k-resnet50-lstm.yaml", out, *overrides)["steps"] == 3
    assert_backbone_unchanged(out, load_file(str(weights)), head="fc")
    request.getfixturevalue("offline")
    weights.unlink()  # the run holds the weights
    captioner = Captioner.from_pretrained(out, device="cpu")
    assert captioner.model.config.encoder_part == {
        "library": "torchvision",
        "architecture": "resnet18",
        "model_args": {},
        "num_features": 512,
    }
    # torchvision's own transform on PIL images (shorter edge to 256, centre 224 crop, bilinear, ImageNet mean/std).
    images = [load_image(photo) for photo in PHOTOS]
    transform = ResNet18_Weights.DEFAULT.transforms()
    expected = np.stack([transform(image).numpy() for image in images])
    assert expected.shape == (5, 3, 224, 224)
    np.testing.assert_allclose(captioner.preprocessing(images), expected, rtol=0, atol=1e-6)
    (result,) = captioner.caption([PHOTO], max_new_tokens=4, num_beams=2)
    assert len(result.captions[0].token_ids) <= 4


def test_torchvision_resnet50_preprocessing_is_its_weights_transform() -> None:
    from torchvision.models import ResNet50_Weights

    imagenet = {"image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)}
    bilinear = int(Image.Resampling.BILINEAR)
    for weights, resize in ((ResNet50_Weights.DEFAULT, 232), (ResNet50_Weights.IMAGENET1K_V1, 256)):
        preprocessing = torchvision_preprocessing(weights)
        assert preprocessing == Preprocessing(
            size=(224, 224), resample=bilinear, crop_from=resize, crop_rounding="half-even", **imagenet
        )


@pytest.mark.usefixtures("offline")
def test_torchvision_weights_without_a_network_fail_in_one_line() -> None:
    with pytest.raises(ModelLoadError) as raised:
        create_model("cnn-lstm", encoder="torchvision:resnet18", vocab_size=50)
    message = str(raised.value)
    assert message.startswith("torchvision:resnet18: cannot download torchvision's weights (")
    assert message.endswith("; offline, pass a local file as torchvision:resnet18@FILE") and "\n" not in message


def test_an_unknown_torchvision_name(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"^torchvision:resnet7: not a torchvision classifier with weights \("):
        create_model("cnn-lstm", encoder="torchvision:resnet7", vocab_size=50)
    with pytest.raises(ModelLoadError) as raised:
        create_model("cnn-lstm", encoder=f"torchvision:resnet18@{tmp_path / 'missing.safetensors'}", vocab_size=50)
    assert (
        str(raised.value)
        == f"{tmp_path / 'missing.safetensors'}: no such state-dict file (expected one of .safetensors, .pth, .pt)"
    )
