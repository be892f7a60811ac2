"""captionkit against the reference usage on the hub checkpoints' model cards, on tiny models in the hub's layouts
("t4": the transformers-4 files the hub holds; "t5": what transformers 5 saves): nlpconnect/vit-gpt2-image-captioning
(VisionEncoderDecoderModel), Salesforce/blip-image-captioning-base (BLIP) and microsoft/git-base-coco (GIT).

Each check feeds the same pixels to captionkit and to plain transformers and compares token ids, caption text and
pixels, including the image settings exactly as the hub's files spell them (BLIP's names no resample: bicubic).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

from _data import real_photos
from _hub_models import CLIP_MEAN, CLIP_STD, hub_layout
from _hub_parts import (
    FAST_FILES,
    VIT_T4_PREPROCESSOR,
    fast_processor_file,
    save_gpt2,
    save_vit,
    save_vit_gpt2_t4,
)
from captionkit import Captioner
from captionkit.images import Preprocessing, load_image

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = real_photos(4)
# Salesforce/blip-image-captioning-base's preprocessor_config.json (size 384 there): no resample, no rescale keys.
BLIP_HUB_PREPROCESSOR = {
    "do_normalize": True,
    "do_resize": True,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "BlipImageProcessor",
    "image_std": CLIP_STD,
    "processor_class": "BlipProcessor",
    "size": 32,
}
# A CLIP processor file (GIT's kind) that leaves its defaults out: shorter edge, centre crop, bicubic.
CLIP_SHORT_PREPROCESSOR = {
    "crop_size": 32,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "CLIPImageProcessor",
    "image_std": CLIP_STD,
    "processor_class": "GitProcessor",
    "size": 32,
}


def _peaked_vit_gpt2_t4(root: Path) -> Path:
    """A t4 ViT-GPT2 captioner whose weights are redrawn large, so that photos get different captions."""
    directory = save_vit_gpt2_t4(root / "t4", save_vit(root / "vit"), save_gpt2(root / "gpt2"))
    hub_config = (directory / "config.json").read_text(encoding="utf-8")
    model = VisionEncoderDecoderModel.from_pretrained(directory)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.3 if name.startswith("decoder.") else 0.1)
    model.save_pretrained(directory)
    (directory / "config.json").write_text(hub_config, encoding="utf-8")  # the hub's own config.json, as it was
    (directory / "generation_config.json").unlink()  # which the hub repository does not have
    return directory


@pytest.fixture(scope="module")
def vit_gpt2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vit-gpt2")
    t4 = _peaked_vit_gpt2_t4(root)
    t5 = root / "t5"
    VisionEncoderDecoderModel.from_pretrained(t4).save_pretrained(t5)
    AutoTokenizer.from_pretrained(t4).save_pretrained(t5)
    AutoImageProcessor.from_pretrained(t4, backend="pil").save_pretrained(t5)
    return {"t4": t4, "t5": t5}


def _reference_pixels(directory: Path, images: list[Any]) -> np.ndarray:
    processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
    return np.asarray(processor(images, return_tensors="np").pixel_values)


def _without_start_and_eos(sequences: torch.Tensor, skip: int, eos: int) -> list[list[int]]:
    rows = sequences[:, skip:].tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


@pytest.mark.parametrize("layout", ["t4", "t5"])
@pytest.mark.parametrize(
    ("ours", "card"),
    [
        ({"num_beams": 1, "max_new_tokens": 12}, {"num_beams": 1, "max_new_tokens": 12}),
        ({"num_beams": 4, "max_new_tokens": 12}, {"num_beams": 4, "max_new_tokens": 12}),
        # The model card's gen_kwargs: its max_length counts the decoder start token, so 15 new tokens.
        ({"num_beams": 4, "max_new_tokens": 15}, {"num_beams": 4, "max_length": 16}),
    ],
    ids=["greedy", "beam4", "model-card"],
)
def test_vit_gpt2_captions_are_generates_on_the_same_pixels(
    vit_gpt2: dict[str, Path], layout: str, ours: dict[str, int], card: dict[str, int]
) -> None:
    directory = vit_gpt2[layout]
    captioner = Captioner.from_pretrained(directory, device="cpu")
    images = captioner.load_images(PHOTOS)
    pixels = captioner.preprocessing(images)
    np.testing.assert_array_equal(pixels, _reference_pixels(directory, images))
    plain = VisionEncoderDecoderModel.from_pretrained(directory).eval()
    config = plain.config
    # The model card's config: one <|endoftext|> for the decoder start, bos, eos and pad.
    endoftext = config.decoder_start_token_id
    assert (config.decoder.bos_token_id, config.eos_token_id, config.pad_token_id) == (endoftext,) * 3
    model = captioner.model
    assert (model.bos_token_id, model.eos_token_id, model.pad_token_id) == (endoftext,) * 3
    with torch.no_grad():
        expected = plain.generate(torch.from_numpy(pixels), **card)
    results = captioner.caption(PHOTOS, **ours)
    token_ids = [result.captions[0].token_ids for result in results]
    assert token_ids == _without_start_and_eos(expected, 1, endoftext)
    assert len({tuple(ids) for ids in token_ids}) > 1  # the photos get different captions
    # The card's text: batch_decode(skip_special_tokens=True), stripped.
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert [r.caption for r in results] == [
        t.strip() for t in tokenizer.batch_decode(expected, skip_special_tokens=True)
    ]


@pytest.mark.parametrize("layout", ["t4", "t5"])
@pytest.mark.parametrize("resample", [2, 3], ids=["bilinear", "bicubic"])
def test_vit_gpt2_pixels_are_vit_image_processors_from_the_saved_file(
    vit_gpt2: dict[str, Path], layout: str, resample: int, tmp_path: Path
) -> None:
    settings = json.loads((vit_gpt2[layout] / "preprocessor_config.json").read_text(encoding="utf-8"))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings | {"resample": resample}))
    if layout == "t4":
        assert settings == VIT_T4_PREPROCESSOR  # the hub's ViTFeatureExtractor file: size as one int
    images = Captioner.from_pretrained(vit_gpt2[layout], device="cpu").load_images(PHOTOS)
    ours = Preprocessing.load(tmp_path)(images)
    assert ours.shape == (4, 3, 32, 32)
    np.testing.assert_allclose(ours, _reference_pixels(tmp_path, images), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("family", "settings"), [("blip", BLIP_HUB_PREPROCESSOR), ("git", CLIP_SHORT_PREPROCESSOR)], ids=["blip", "git"]
)
def test_processor_files_that_leave_out_resample_give_their_processors_pixels_and_captions(
    family: str, settings: dict[str, Any], tmp_path: Path
) -> None:
    hub_layout(family, tmp_path, legacy=True)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings), encoding="utf-8")
    captioner = Captioner.from_pretrained(tmp_path, device="cpu")
    images = captioner.load_images(PHOTOS)
    pixels = captioner.preprocessing(images)
    # The processors resize bicubic where the file names no resample (ViTImageProcessor would: bilinear).
    np.testing.assert_allclose(pixels, _reference_pixels(tmp_path, images), rtol=0, atol=1e-6)
    model = captioner.model
    with torch.no_grad():
        expected = model.hf.generate(pixel_values=torch.from_numpy(pixels), max_new_tokens=10, num_beams=4)
    results = captioner.caption(PHOTOS, max_new_tokens=10, num_beams=4)
    assert [r.captions[0].token_ids for r in results] == _without_start_and_eos(expected, 1, model.eos_token_id)


@pytest.mark.parametrize("name", sorted(FAST_FILES))
def test_each_processors_own_defaults_fill_what_its_file_leaves_out(name: str, tmp_path: Path) -> None:
    settings, size = fast_processor_file(name)
    # The settings with a per-processor default, and the fast processors' call settings.
    left_out = ("resample", "image_mean", "image_std", "device", "disable_grouping", "return_tensors")
    settings = {key: value for key, value in settings.items() if key not in left_out}
    settings["image_processor_type"] = f"{name}ImageProcessor"
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings), encoding="utf-8")
    images = [load_image(path) for path in PHOTOS[:2]]
    ours = Preprocessing.load(tmp_path)(images)
    assert ours.shape == (2, 3, *size)
    np.testing.assert_allclose(ours, _reference_pixels(tmp_path, images), rtol=0, atol=1e-6)


def test_blip_prompt_is_left_out_of_the_caption_the_model_card_prints_whole(tmp_path: Path) -> None:
    hub_layout("blip", tmp_path, legacy=True)
    captioner = Captioner.from_pretrained(tmp_path, device="cpu")
    tokenizer = captioner.tokenizer.hf
    pixels = torch.from_numpy(captioner.preprocessing(captioner.load_images(PHOTOS)))
    prompt = "a picture of"
    # The model card: processor(image, text) gives [CLS] prompt [SEP]; generate continues it; decode prints it all.
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids.repeat(len(PHOTOS), 1)
    with torch.no_grad():
        printed = captioner.model.hf.generate(pixel_values=pixels, input_ids=prompt_ids, max_new_tokens=8)
    card = tokenizer.batch_decode(printed, skip_special_tokens=True)
    results = captioner.caption(PHOTOS, prompt=prompt, num_beams=1, max_new_tokens=8)
    assert all(result.caption and not result.caption.startswith(prompt) for result in results)
    assert [f"{prompt} {result.caption}" for result in results] == card


def test_a_generation_config_json_leaves_the_documented_defaults(vit_gpt2: dict[str, Path], tmp_path: Path) -> None:
    """A fine-tune's generation_config.json (3 beams, max_length 8, no repeated bigram) is not read: captionkit's
    defaults (4 beams, 20 new tokens, no n-gram blocking) hold, as README's decoding table promises."""
    directory = tmp_path / "fine-tune"
    shutil.copytree(vit_gpt2["t5"], directory)
    file = directory / "generation_config.json"
    settings = json.loads(file.read_text(encoding="utf-8"))
    file.write_text(json.dumps(settings | {"num_beams": 3, "max_length": 8, "no_repeat_ngram_size": 2}))
    captioner = Captioner.from_pretrained(directory, device="cpu")
    plain = VisionEncoderDecoderModel.from_pretrained(directory).eval()
    pixels = torch.from_numpy(captioner.preprocessing(captioner.load_images(PHOTOS)))
    with torch.no_grad():
        documented = plain.generate(pixels, num_beams=4, max_new_tokens=20, no_repeat_ngram_size=0, max_length=None)
        by_the_file = plain.generate(pixels)
    defaults = [r.captions[0].token_ids for r in captioner.caption(PHOTOS)]
    eos = captioner.model.eos_token_id
    assert defaults == _without_start_and_eos(documented, 1, eos)
    assert all(len(ids) == 20 for ids in defaults)  # these random weights never end a caption early
    assert defaults != _without_start_and_eos(by_the_file, 1, eos)
