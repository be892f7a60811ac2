"""Starting from pretrained parts (issue 16): hub encoders and GPT-2 decoders, in the transformers 4 and 5 layouts.

The parts are tiny random models saved as their hub repositories store them (tests/_hub_parts.py). A new model keeps
every pretrained tensor as it is, a recipe trains from them, and the run reloads with the part's own preprocessing
and tokenizer.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    CLIPVisionModel,
    GPT2LMHeadModel,
    VisionEncoderDecoderModel,
)

from _data import real_photos
from _helpers import run_cli_process
from _hub_parts import (
    LAYOUTS,
    part_weights,
    resave_as_fast_processor,
    save_clip,
    save_gpt2,
    save_resnet,
    save_vision_transformer,
    save_vit,
    save_vit_gpt2_t4,
)
from _recipes import COCO, FLICKR, PHOTO, SENTICAP, TINY, run_recipe
from captionkit import Captioner
from captionkit.config import StageSection, load_train_config
from captionkit.errors import ConfigError, ModelLoadError
from captionkit.images import Preprocessing, load_image
from captionkit.models.registry import create_model, load_model
from captionkit.text import CaptionTokenizer
from captionkit.training.setup import build_setup, seed_everything
from captionkit.training.stages import Stages

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = real_photos(3)
CROSS_ATTENTION = (".crossattention.", ".ln_cross_attn.")


@pytest.fixture(scope="module", params=LAYOUTS)
def parts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny ViT and a tiny GPT-2, both in one layout (transformers 4 as on the hub, or transformers 5)."""
    root = tmp_path_factory.mktemp(f"parts-{request.param}")
    return save_vit(root / "vit", request.param), save_gpt2(root / "gpt2", request.param, seed=1)


def assert_parts_unchanged(run: Path, encoder: Path, decoder: Path) -> None:
    """Every tensor the parts' files store is in the run's model.safetensors, under the hub's name, unchanged (an
    image classifier's head stays behind; style tokens add rows after GPT-2's)."""
    saved = part_weights(run)
    for key, tensor in part_weights(encoder).items():
        if not key.startswith("classifier."):
            assert torch.equal(saved[f"encoder.{key.removeprefix('vit.')}"], tensor), key
    assert not any(key.startswith("encoder.classifier.") for key in saved)
    stored = {key.removeprefix("transformer."): value for key, value in part_weights(decoder).items()}
    for key, tensor in stored.items():
        assert torch.equal(saved[f"decoder.transformer.{key}"][: len(tensor)], tensor), key
    # GPT-2's output layer is its token table (tied), as in the part.
    output = saved.get("decoder.lm_head.weight", saved["decoder.transformer.wte.weight"])
    assert torch.equal(output[: len(stored["wte.weight"])], stored["wte.weight"])


def one_step_stages(recipe: str) -> str:
    """The recipe's stages, each one step long (step k trains stage k), as a ``--set train.stages=`` value."""
    stages = load_train_config(recipe).train.stages
    short = [{"until_step": index + 1, "train": stage.train} for index, stage in enumerate(stages[:-1])]
    short.append({"train": stages[-1].train})
    return yaml.safe_dump(short, default_flow_style=True).strip()


def start_of_run(recipe: str, *overrides: str) -> torch.nn.Module:
    """The model ``run_recipe(recipe, *overrides)`` starts training from: built as the trainer builds it, from the
    same seed (the new layers' random start included)."""
    config = load_train_config(recipe, [*TINY, *overrides])
    seed_everything(config.train.seed)
    return build_setup(config).model


def changed_groups(before: torch.nn.Module, after: torch.nn.Module, groups: dict[str, list[str]]) -> set[str]:
    """The groups with a parameter that differs; every parameter of the others is bit-identical."""
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    assert set(old) == set(new) == {name for names in groups.values() for name in names}
    return {group for group, names in groups.items() if any(not torch.equal(old[n], new[n]) for n in names)}


def checkpoints(run: Path, steps: int) -> list[torch.nn.Module]:
    return [load_model(run / "checkpoints" / f"step-{step:06d}") for step in range(1, steps + 1)]


def trainable_groups(model: torch.nn.Module) -> dict[str, bool]:
    """Per parameter group, whether any of its parameters trains."""
    parameters = dict(model.named_parameters())
    return {group: any(parameters[n].requires_grad for n in names) for group, names in model.parameter_groups().items()}


def assert_pixels_as_part(preprocessing: Preprocessing, part: Path, processor: Any = None) -> None:
    """``preprocessing`` gives the real photos the pixels of ``part``'s own image processor (``processor``; by default
    transformers' PIL backend of it) at the 32 px every tiny part here takes, to 1e-6."""
    images = [load_image(photo) for photo in PHOTOS]
    if processor is None:
        processor = AutoImageProcessor.from_pretrained(part, use_fast=False)
    expected = processor(images, return_tensors="np")["pixel_values"]
    assert expected.shape == (len(PHOTOS), 3, 32, 32)
    np.testing.assert_allclose(preprocessing(images), expected, rtol=0, atol=1e-6)


def reloaded_run(model: torch.nn.Module, decoder: Path, run: Path) -> Captioner:
    """``model`` saved as a run (with the decoder part's tokenizer and its own preprocessing) and loaded back."""
    tokenizer = CaptionTokenizer.load(decoder)
    Captioner(model, tokenizer, model.preprocessing, device="cpu").save_pretrained(run)  # type: ignore[arg-type]
    return Captioner.from_pretrained(run, device="cpu")


def test_vit_gpt2_from_parts_copies_every_pretrained_weight(parts: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, decoder = parts
    model = create_model("vit-gpt2", encoder=str(encoder), decoder=str(decoder))
    model.save_pretrained(tmp_path)
    assert_parts_unchanged(tmp_path, encoder, decoder)
    # The new tensors are exactly the cross-attention layers (2 blocks x 8) and the projection to GPT-2's width.
    stored = {f"encoder.{key}" for key in part_weights(encoder)}
    stored |= {f"decoder.transformer.{key.removeprefix('transformer.')}" for key in part_weights(decoder)}
    new = sorted(set(part_weights(tmp_path)) - stored - {"decoder.lm_head.weight"})
    assert len(new) == 18 and all(any(p in key for p in CROSS_ATTENTION) for key in new[:16]), new
    assert new[16:] == ["enc_to_dec_proj.bias", "enc_to_dec_proj.weight"]
    assert model.ved.enc_to_dec_proj.weight.shape == (32, 48)
    # The projection is new, like the cross-attention layers: it trains with them (a from-parts recipe's stage 1),
    # and since ``encode`` runs it, training it turns off the frozen-encoder feature cache.
    projection = ["ved.enc_to_dec_proj.weight", "ved.enc_to_dec_proj.bias"]
    groups = model.parameter_groups()
    assert set(projection) <= set(groups["cross_attention"]) and not set(projection) & set(groups["encoder"])
    assert set(model.encode_parameter_names()) == set(groups["encoder"]) | set(projection)
    assert not Stages(model, [StageSection(train=["cross_attention"])]).encoder_always_frozen()
    assert Stages(model, [StageSection(train=["decoder", "embeddings"])]).encoder_always_frozen()
    # GPT-2's ids: its <|endoftext|> starts and ends captions and pads.
    assert (model.bos_token_id, model.eos_token_id, model.pad_token_id) == (0, 0, 0)
    assert model.preprocessing is not None and model.preprocessing.size == (32, 32)


def test_a_part_that_lacks_a_pretrained_tensor_is_refused(parts: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, decoder = parts
    shutil.copytree(decoder, tmp_path / "gpt2")
    weights = part_weights(decoder)
    (dropped,) = [key for key in weights if key.endswith("ln_f.bias")]
    save_file({key: value for key, value in weights.items() if key != dropped}, tmp_path / "gpt2" / "model.safetensors")
    with pytest.raises(ModelLoadError) as raised:
        create_model("vit-gpt2", encoder=str(encoder), decoder=str(tmp_path / "gpt2"))
    reason = "weights do not match the config (1 tensors: transformer.ln_f.bias)"
    assert str(raised.value) == f"{tmp_path / 'gpt2'}: {reason}"


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_a_part_whose_weights_do_not_fit_its_config_names_a_tensor(
    part: str, parts: tuple[Path, Path], tmp_path: Path
) -> None:
    """A config.json edited (or copied from another size) after the weights were saved: one line naming a tensor
    and both shapes, not transformers' advice to pass ignore_mismatched_sizes."""
    given = dict(zip(("encoder", "decoder"), parts, strict=True))
    changed = shutil.copytree(given[part], tmp_path / part)
    config = json.loads((changed / "config.json").read_text())
    config |= {"hidden_size": 64} if part == "encoder" else {"n_embd": 64}
    (changed / "config.json").write_text(json.dumps(config))
    given[part] = changed
    with pytest.raises(ModelLoadError) as raised:
        create_model("vit-gpt2", encoder=str(given["encoder"]), decoder=str(given["decoder"]))
    first = (
        "embeddings.cls_token: [1, 1, 48] in the weights, [1, 1, 64]"
        if part == "encoder"
        else "transformer.h.0.attn.c_attn.bias: [96] in the weights, [192]"
    )
    # How many tensors differ depends on the layout (a transformers 5 ViT saves no unused pooler weights).
    message = str(raised.value)
    assert message.startswith(f"{changed}: weight shapes do not match config.json (")
    assert message.endswith(f" tensors; {first} by config.json)") and "\n" not in message


def test_a_missing_part_is_a_one_line_error(parts: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, decoder = parts
    with pytest.raises(ConfigError, match=r"needs both model\.encoder and model\.decoder"):
        create_model("vit-gpt2", encoder=str(encoder))
    with pytest.raises(ModelLoadError, match="a decoder part must be a GPT-2-family LM"):
        create_model("vit-gpt2", encoder=str(encoder), decoder=str(encoder))
    with pytest.raises(ModelLoadError, match="is a 'vit' model; an encoder part must be one of resnet"):
        create_model("cnn-lstm", encoder=str(encoder))
    with pytest.raises(ConfigError, match="architecture comes from the pretrained parts; remove decoder_layers"):
        create_model("vit-gpt2", encoder=str(encoder), decoder=str(decoder), decoder_layers=4)


def test_a_recipe_whose_decoder_part_is_not_gpt2_names_the_part_and_kind(parts: tuple[Path, Path]) -> None:
    """The decoder part's tokenizer is read first: a ViT there failed as "cannot load a tokenizer (Couldn't
    instantiate the backend tokenizer from one of: )"."""
    encoder, _ = parts
    overrides = [f"model.encoder={encoder}", f"model.decoder={encoder}", f"data.train={COCO}", f"data.val={COCO}"]
    config = load_train_config("coco-vit-gpt2-from-parts", [*TINY, *overrides])
    with pytest.raises(ModelLoadError) as raised:
        build_setup(config)
    assert str(raised.value) == f"{encoder}: is a 'vit' model; a decoder part must be a GPT-2-family LM"


def test_hub_ids_without_a_network_fail_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as error:
        create_model("vit-gpt2", encoder="captionkit-test/no-such-vit", decoder="captionkit-test/no-such-gpt2")
    assert str(error.value) == (
        "captionkit-test/no-such-vit: not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    )


def test_hub_ids_with_an_unreachable_hub_fail_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    # The probe's URL comes from this template, fixed when huggingface_hub is imported: without it the test would
    # ask the real hub (and pass only where there is no internet).
    template = "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE", template)
    with pytest.raises(ModelLoadError) as error:
        create_model("vit-gpt2", encoder="captionkit-test/no-such-vit", decoder="gpt2")
    message = str(error.value)
    assert message.startswith("captionkit-test/no-such-vit: cannot download from the Hugging Face Hub")
    assert "\n" not in message


def test_the_saved_model_loads_in_plain_transformers(parts: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, decoder = parts
    torch.manual_seed(0)
    model = create_model("vit-gpt2", encoder=str(encoder), decoder=str(decoder))
    model.save_pretrained(tmp_path)
    plain = VisionEncoderDecoderModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[0, 5, 9, 11], [0, 7, 3, 2]])
    with torch.no_grad():
        expected = plain(pixel_values=pixels, decoder_input_ids=ids).logits
        assert torch.allclose(model(pixels, ids), expected, atol=1e-5)
    assert load_model(tmp_path).bos_token_id == 0


def test_a_recipe_from_parts_trains_saves_reloads_and_captions(
    parts: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    encoder, decoder = parts
    out = tmp_path / "run"
    overrides = [f"model.encoder={encoder}", f"model.decoder={decoder}", f"data.train={COCO}", f"data.val={COCO}"]
    # lr 0 with every group trainable from the first step (the recipe's stage 1 would freeze both parts anyway).
    everything = ["train.lr=0", "train.warmup_steps=0", "train.stages=[{train: [all]}]"]
    summary = run_recipe(capsys, "coco-vit-gpt2-from-parts.yaml", out, *overrides, *everything)
    assert summary["steps"] == 3
    captioner = Captioner.from_pretrained(out, device="cpu")
    # lr 0: every pretrained tensor of both parts is in the run unchanged.
    assert_parts_unchanged(out, encoder, decoder)
    # The decoder's own tokenizer (GPT-2: pad = eos) came along.
    reference = AutoTokenizer.from_pretrained(decoder)
    caption = "a dog runs through the grass"
    assert captioner.tokenizer.encode(caption) == reference(caption)["input_ids"]
    assert captioner.tokenizer.pad_token_id == captioner.tokenizer.eos_token_id == reference.eos_token_id
    (result,) = captioner.caption([PHOTO], max_new_tokens=4, num_beams=2)
    assert len(result.captions[0].token_ids) <= 4


def test_the_from_parts_recipe_unfreezes_in_three_stages(
    parts: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = "coco-vit-gpt2-from-parts.yaml"
    trained = [stage.train for stage in load_train_config(recipe).train.stages]
    assert trained == [["cross_attention"], ["cross_attention", "decoder"], ["all"]]
    encoder, decoder = parts
    out = tmp_path / "run"
    overrides = [f"model.encoder={encoder}", f"model.decoder={decoder}", f"data.train={COCO}", f"data.val={COCO}"]
    # lr > 0 (the recipe's 1e-4, no warm-up) and the recipe's stages one step each.
    steps = ["train.warmup_steps=0", f"train.stages={one_step_stages(recipe)}", "train.checkpoint_every=1"]
    steps.append("train.keep_checkpoints=3")
    start = start_of_run(recipe, *overrides, *steps)
    summary = run_recipe(capsys, recipe, out, *overrides, *steps)
    assert summary["steps"] == 3
    groups = start.parameter_groups()
    after = [start, *checkpoints(out, 3)]
    changed = [changed_groups(before, now, groups) for before, now in itertools.pairwise(after)]
    assert changed == [
        {"cross_attention"},
        {"cross_attention", "decoder"},
        {"cross_attention", "decoder", "encoder", "embeddings"},
    ]
    # Stage 1 moved every parameter of its group, the projection to GPT-2's width (48 -> 32 here) included: new, it
    # trains from the start with the cross-attention layers.
    old, new = dict(start.named_parameters()), dict(after[1].named_parameters())
    assert "ved.enc_to_dec_proj.weight" in groups["cross_attention"]
    assert all(not torch.equal(old[name], new[name]) for name in groups["cross_attention"])
    # Stage 1 left both parts as published (tensor by tensor, under the hub's names); the last stage trained them.
    assert_parts_unchanged(out / "checkpoints" / "step-000001", encoder, decoder)
    with pytest.raises(AssertionError):
        assert_parts_unchanged(out, encoder, decoder)


def test_the_senticap_recipe_trains_from_parts_with_sentiment_styles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = "senticap-vit-gpt2-from-parts.yaml"
    config = load_train_config(recipe)
    assert (config.model.encoder, config.model.decoder) == ("google/vit-base-patch16-224", "gpt2")
    assert config.data.styles == {"positive": 0.5, "negative": 0.5}
    assert [stage.train for stage in config.train.stages] == [["cross_attention"], ["all"]]
    # google/vit-base-patch16-224 is an ImageNet classifier ("vit."-prefixed weights and a head), as the hub has it.
    encoder = save_vit(tmp_path / "vit", "t4", classifier=True)
    decoder = save_gpt2(tmp_path / "gpt2", "t4", seed=1)
    out = tmp_path / "run"
    overrides = [f"model.encoder={encoder}", f"model.decoder={decoder}", f"data.train={SENTICAP}"]
    # fp16 needs a CUDA GPU; lr > 0 (the recipe's 1e-4, no warm-up) and the recipe's two stages one step each.
    overrides += ["train.precision=bf16", "train.steps=2", "train.warmup_steps=0", "train.checkpoint_every=1"]
    overrides.append(f"train.stages={one_step_stages(recipe)}")
    start = start_of_run(recipe, *overrides)
    summary = run_recipe(capsys, recipe, out, *overrides)
    assert summary["steps"] == 2 and summary["val_cider"] is not None and summary["unreadable_images"] == 0
    # Each step drew the recipe's 4 micro-batches of 2 captions.
    state = json.loads((out / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["loop"]["cursor"] == 2 * 4 * 2
    groups = start.parameter_groups()
    after = [start, *checkpoints(out, 2)]
    changed = [changed_groups(before, now, groups) for before, now in itertools.pairwise(after)]
    assert changed == [{"cross_attention"}, {"cross_attention", "decoder", "encoder", "embeddings"}]
    assert_parts_unchanged(out / "checkpoints" / "step-000001", encoder, decoder)
    # GPT-2's tokenizer with a start token per style: two new rows in its token table.
    captioner = Captioner.from_pretrained(out, device="cpu")
    gpt2 = AutoTokenizer.from_pretrained(decoder)
    # Positive and negative alone: the run never trained GPT-2's own start token, so it writes no neutral captions.
    assert captioner.styles == ["positive", "negative"]
    assert captioner.model.vocab_size == captioner.tokenizer.vocab_size == len(gpt2) + 2
    assert captioner.tokenizer.encode("a happy dog") == gpt2("a happy dog")["input_ids"]
    # The ViT's own preprocessing, saved in the run: the same pixels as its image processor on real photos.
    assert_pixels_as_part(captioner.preprocessing, encoder)
    # A style starts the decoder from its own token: the two styles score a photo's captions differently.
    results = {s: captioner.caption([PHOTO], style=s, num_beams=1, max_new_tokens=4)[0] for s in captioner.styles}
    assert results["positive"].score != results["negative"].score
    # The run is in the VisionEncoderDecoder hub layout: plain transformers loads it.
    plain = VisionEncoderDecoderModel.from_pretrained(out)
    assert plain.config.decoder.vocab_size == len(gpt2) + 2


def test_the_run_preprocesses_as_the_encoders_own_image_processor(parts: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, decoder = parts
    model = create_model("vit-gpt2", encoder=str(encoder), decoder=str(decoder))
    assert_reloaded_run_preprocesses_as(model, decoder, encoder, tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert (saved["image_mean"], saved["image_std"]) == ([0.5] * 3, [0.5] * 3)


def test_the_default_image_processor_without_torchvision_gives_the_runs_pixels(
    parts: tuple[Path, Path], tmp_path: Path
) -> None:
    """``AutoImageProcessor.from_pretrained(part)`` with its defaults (no ``use_fast``/``backend``), as a user calls it.

    transformers 5 then picks its torchvision backend (the "fast" processor) when torchvision is installed, and falls
    back to the PIL backend without it. captionkit needs no torchvision and reproduces the PIL backend, which the
    other tests name explicitly (``use_fast=False``); here, where torchvision is absent, the default is that same PIL
    processor and gives the run's pixels to 1e-6. The torchvision backend resizes with torchvision, not PIL, and
    differs slightly: tests/test_fast_image_processors.py (in .venv-vision) holds it to its measured bound.
    """
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        pytest.skip("torchvision is installed: the default processor is the torchvision backend (see the docstring)")
    encoder, decoder = parts
    processor = AutoImageProcessor.from_pretrained(encoder)
    assert type(processor).__name__ == "ViTImageProcessorPil"
    model = create_model("vit-gpt2", encoder=str(encoder), decoder=str(decoder))
    assert_pixels_as_part(reloaded_run(model, decoder, tmp_path).preprocessing, encoder, processor)


# --- issue 20, defect 1: finished ViT-GPT2 checkpoints in the transformers 4 (hub) and 5 layouts


def t4_checkpoint(root: Path) -> tuple[Path, Path, Path]:
    """A tiny ViT, a tiny GPT-2 and a vit-gpt2 checkpoint of the two, all in the hub's transformers 4 layout."""
    vit, gpt2 = save_vit(root / "vit", "t4"), save_gpt2(root / "gpt2", "t4")
    return vit, gpt2, save_vit_gpt2_t4(root / "run", vit, gpt2)


def _plain_transformers5_fine_tune(directory: Path, vit: Path, gpt2: Path, ids_in: str) -> Path:
    """What a user's transformers 5 script saves: GPT-2's config has no decoder_start_token_id; the start id is set
    on the model config or on the generation config only (``ids_in``)."""
    encoder = AutoModel.from_pretrained(vit)
    decoder = GPT2LMHeadModel.from_pretrained(gpt2, add_cross_attention=True)
    ved = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    endoftext = decoder.config.eos_token_id
    settings = ved.generation_config if ids_in == "generation" else ved.config
    settings.decoder_start_token_id, settings.pad_token_id = endoftext, endoftext
    ved.save_pretrained(directory)
    AutoTokenizer.from_pretrained(gpt2).save_pretrained(directory)
    AutoImageProcessor.from_pretrained(vit).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("ids_in", ["config", "generation"])
def test_a_checkpoint_saved_by_transformers5_captions(ids_in: str, tmp_path: Path) -> None:
    vit, gpt2 = save_vit(tmp_path / "vit", "t5"), save_gpt2(tmp_path / "gpt2", "t5")
    run = _plain_transformers5_fine_tune(tmp_path / "run", vit, gpt2, ids_in)
    assert "decoder_start_token_id" not in json.loads((run / "config.json").read_text())["decoder"]
    captioner = Captioner.from_pretrained(run, device="cpu")
    endoftext = AutoTokenizer.from_pretrained(gpt2).eos_token_id
    model = captioner.model
    assert (model.bos_token_id, model.eos_token_id, model.pad_token_id) == (endoftext,) * 3
    assert_greedy_as_transformers(captioner, run, endoftext)


def test_a_checkpoint_in_the_hubs_transformers4_layout_captions(tmp_path: Path) -> None:
    _, gpt2, run = t4_checkpoint(tmp_path)
    captioner = Captioner.from_pretrained(run, device="cpu")
    endoftext = AutoTokenizer.from_pretrained(gpt2).eos_token_id
    model = captioner.model
    assert (model.bos_token_id, model.eos_token_id, model.pad_token_id) == (endoftext,) * 3
    assert_greedy_as_transformers(captioner, run, endoftext)


def test_a_transformers4_checkpoint_with_generation_settings_in_config_json_resaves(tmp_path: Path) -> None:
    """Fine-tunes of transformers 4 often set beam settings on the model config (no generation_config.json):
    captionkit loads the checkpoint, saves it again, and plain transformers loads that with the same settings."""
    _, gpt2, run = t4_checkpoint(tmp_path)
    config = json.loads((run / "config.json").read_text())
    settings = {"max_length": 16, "num_beams": 4, "early_stopping": True, "length_penalty": 2.0}
    (run / "config.json").write_text(json.dumps(config | settings))
    captioner = Captioner.from_pretrained(run, device="cpu")
    endoftext = AutoTokenizer.from_pretrained(gpt2).eos_token_id
    assert_greedy_as_transformers(captioner, run, endoftext)
    captioner.save_pretrained(tmp_path / "resaved")
    plain = VisionEncoderDecoderModel.from_pretrained(tmp_path / "resaved")
    assert {key: getattr(plain.generation_config, key) for key in settings} == settings
    assert_greedy_as_transformers(Captioner.from_pretrained(tmp_path / "resaved", device="cpu"), run, endoftext)


def _resave_sharded(model: torch.nn.Module, source: Path, target: Path) -> Path:
    """``model`` saved by transformers in several shards (model.safetensors.index.json), with ``source``'s other
    files (tokenizer, preprocessing) beside them."""
    model.save_pretrained(target, max_shard_size="40KB")  # type: ignore[operator]
    for path in source.iterdir():
        if not path.name.startswith("model") and not (target / path.name).exists():
            shutil.copy(path, target / path.name)
    assert (target / "model.safetensors.index.json").is_file() and len(list(target.glob("model-*.safetensors"))) > 2
    return target


def test_sharded_checkpoints_and_parts_load_as_single_files_do(tmp_path: Path) -> None:
    vit, gpt2, run = t4_checkpoint(tmp_path)
    sharded = _resave_sharded(VisionEncoderDecoderModel.from_pretrained(run), run, tmp_path / "sharded")
    expected = load_model(run).state_dict()
    found = Captioner.from_pretrained(sharded, device="cpu").model.state_dict()
    assert set(found) == set(expected) and all(torch.equal(found[key], expected[key]) for key in expected)
    decoder = _resave_sharded(GPT2LMHeadModel.from_pretrained(gpt2), gpt2, tmp_path / "gpt2-sharded")
    expected = create_model("vit-gpt2", encoder=str(vit), decoder=str(gpt2)).ved.decoder.transformer.state_dict()
    found = create_model("vit-gpt2", encoder=str(vit), decoder=str(decoder)).ved.decoder.transformer.state_dict()
    pretrained = [key for key in expected if ".crossattention." not in key and ".ln_cross_attn." not in key]
    assert len(pretrained) > 20 and all(torch.equal(found[key], expected[key]) for key in pretrained)


def assert_greedy_as_transformers(captioner: Captioner, run: Path, endoftext: int) -> None:
    """The same checkpoint in plain transformers: its greedy captions of real photos are captionkit's."""
    plain = VisionEncoderDecoderModel.from_pretrained(run).eval()
    pixels = torch.from_numpy(captioner.preprocessing([load_image(photo) for photo in PHOTOS]))
    expected = plain.generate(pixel_values=pixels, max_new_tokens=4, num_beams=1, do_sample=False)
    results = captioner.caption(PHOTOS, max_new_tokens=4, num_beams=1)
    assert expected[:, 0].tolist() == [endoftext] * len(PHOTOS)  # generate started from the same id
    for row, result in zip(expected.tolist(), results, strict=True):
        tokens = row[1 : row.index(endoftext, 1)] if endoftext in row[1:] else row[1:]
        assert result.captions[0].token_ids == tokens


# --- prefix-gpt2 (ClipCap): the CLIP vision tower (or a ViT) and GPT-2


@pytest.fixture(scope="module", params=LAYOUTS)
def clip_parts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny CLIP (both towers, as openai/clip-vit-base-patch32 stores it) and a tiny GPT-2, in one layout."""
    root = tmp_path_factory.mktemp(f"clip-{request.param}")
    return save_clip(root / "clip", request.param), save_gpt2(root / "gpt2", request.param, seed=1)


def tower_key(saved: dict[str, torch.Tensor], key: str) -> str:
    """Where a CLIP file's vision-tower tensor sits in a saved model: transformers 5 names the tower's modules
    without the file's "vision_model." level."""
    name = f"encoder.{key}"
    return name if name in saved else f"encoder.{key.removeprefix('vision_model.')}"


def assert_clip_tower_unchanged(run: Path, encoder: Path) -> None:
    """Every tensor of the CLIP part's vision tower is in the run's weights, unchanged."""
    saved = part_weights(run)
    vision = {key: value for key, value in part_weights(encoder).items() if key.startswith("vision_model.")}
    assert vision
    for key, tensor in vision.items():
        assert torch.equal(saved[tower_key(saved, key)], tensor), key


def assert_prefix_parts_unchanged(run: Path, encoder: Path, decoder: Path) -> None:
    """Every tensor of the CLIP vision tower and of GPT-2 is in the run's (native) weights, unchanged."""
    assert_clip_tower_unchanged(run, encoder)
    saved = part_weights(run)
    for key, tensor in part_weights(decoder).items():
        name = f"gpt2.transformer.{key.removeprefix('transformer.')}"
        # Tied tensors are stored once: GPT-2's token table under its output layer's name.
        name = "gpt2.lm_head.weight" if name == "gpt2.transformer.wte.weight" and name not in saved else name
        assert torch.equal(saved[name], tensor), key


@pytest.mark.parametrize(
    "settings",
    [{}, {"mapper": "transformer", "freeze_decoder": True, "prefix_length": 6}],
    ids=["mlp-mapper", "transformer-mapper"],
)
def test_prefix_gpt2_from_clip_and_gpt2(clip_parts: tuple[Path, Path], settings: dict, tmp_path: Path) -> None:
    encoder, decoder = clip_parts
    model = create_model("prefix-gpt2", encoder=str(encoder), decoder=str(decoder), **settings)
    model.save_pretrained(tmp_path)
    assert_prefix_parts_unchanged(tmp_path, encoder, decoder)
    # The encoder is frozen by default (ClipCap); GPT-2 is fine-tuned with the MLP mapper, frozen with the other.
    trained_decoder = not settings.get("freeze_decoder", False)
    assert trainable_groups(model) == {"encoder": False, "mapper": True, "decoder": trained_decoder}
    # ClipCap's widths: the MLP's hidden layer prefix_length * width / 2, the transformer's feed-forward 2 * width.
    clipcap = 2 * 32 if settings else model.config.prefix_length * 32 // 2
    assert model.config.mapper_hidden_size == clipcap
    # The image embedding is CLIP's pooled output (after its final layer norm), as ClipCap reads it.
    pixels = torch.randn(2, 3, 32, 32)
    tower = CLIPVisionModel.from_pretrained(encoder).eval()
    with torch.no_grad():
        assert torch.equal(model.encode(pixels).tokens[:, 0], tower(pixel_values=pixels).pooler_output)
    reloaded = load_model(tmp_path)
    ids = torch.tensor([[0, 5, 9], [0, 7, 3]])
    with torch.no_grad():
        assert torch.equal(reloaded(pixels, ids), model.eval()(pixels, ids))


@pytest.mark.parametrize("classifier", [False, True], ids=["vit-in21k", "vit-imagenet-classifier"])
def test_prefix_gpt2_from_a_plain_vit_and_gpt2(
    parts: tuple[Path, Path], classifier: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Hugging Face ViT as ClipCap's encoder (google/vit-base-patch16-224-in21k, or -224 with its ImageNet head):
    its CLS token is the image embedding."""
    _, decoder = parts
    encoder = parts[0] if not classifier else save_vit(tmp_path / "vit-classifier", "t4", classifier=True)
    model = create_model("prefix-gpt2", encoder=str(encoder), decoder=str(decoder))
    assert type(model.encoder).__name__ == "ViTModel"
    vit = AutoModel.from_pretrained(encoder).eval()
    own = model.encoder.state_dict()
    # Every tensor but the pooler's (unused; the classifier's file has none, which transformers fills randomly).
    stored = {name: tensor for name, tensor in vit.state_dict().items() if not name.startswith("pooler.")}
    assert len(stored) > 20 and all(torch.equal(own[name], tensor) for name, tensor in stored.items())
    gpt2 = GPT2LMHeadModel.from_pretrained(decoder).eval()
    assert all(torch.equal(model.gpt2.state_dict()[name], tensor) for name, tensor in gpt2.state_dict().items())
    assert trainable_groups(model) == {"encoder": False, "mapper": True, "decoder": True}
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode(pixels).tokens[:, 0], vit(pixel_values=pixels).last_hidden_state[:, 0])
    # Saved and reloaded: the same logits, and the ViT's own preprocessing (mean = std = 0.5) on real photos.
    reloaded = reloaded_run(model, decoder, tmp_path / "run")
    ids = torch.tensor([[0, 5, 9], [0, 7, 3]])
    with torch.no_grad():
        assert torch.equal(reloaded.model(pixels, ids), model.eval()(pixels, ids))
    assert_pixels_as_part(reloaded.preprocessing, encoder)


def test_prefix_gpt2_from_parts_grows_its_vocabulary_for_style_tokens(
    clip_parts: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder, decoder = clip_parts
    tokenizer = CaptionTokenizer.load(decoder)
    tokenizer.hf.add_special_tokens({"additional_special_tokens": ["<positive>", "<negative>"]})
    model = create_model("prefix-gpt2", tokenizer=tokenizer, encoder=str(encoder), decoder=str(decoder)).eval()
    assert model.vocab_size == tokenizer.vocab_size == 322
    model.save_pretrained(tmp_path)
    pixels, ids = torch.randn(2, 3, 32, 32), torch.tensor([[0, 320, 9], [0, 321, 3]])
    with torch.no_grad():
        logits = model(pixels, ids)
        assert logits.shape == (2, 3, 322)
        assert torch.equal(load_model(tmp_path)(pixels, ids), logits)


def gpt2_weights_unchanged(before: torch.nn.Module, after: torch.nn.Module) -> bool:
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    return all(torch.equal(old[name], new[name]) for name in old if name.startswith("gpt2."))


@pytest.mark.parametrize("recipe", ["flickr30k-clipcap.yaml", "flickr30k-clipcap-transformer.yaml"])
def test_the_clipcap_recipes_train_from_parts(
    clip_parts: tuple[Path, Path], recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    encoder, decoder = clip_parts
    out = tmp_path / "run"
    overrides = [f"model.encoder={encoder}", f"model.decoder={decoder}", f"data.train={FLICKR}"]
    # The tiny GPT-2 has 64 positions: 40 prefix tokens leave room for 20-token captions. lr > 0, large enough for
    # bf16 autocast steps to show in 3 steps: what is trainable changes, what is frozen does not.
    overrides += ["train.lr=1e-3", "train.warmup_steps=0", "data.max_length=20"]
    start = start_of_run(recipe, *overrides)
    summary = run_recipe(capsys, recipe, out, *overrides)
    assert summary["steps"] == 3
    transformer = recipe == "flickr30k-clipcap-transformer.yaml"
    # ClipCap's two variants: an MLP mapper with GPT-2 fine-tuned, a transformer mapper with GPT-2 frozen.
    parameters = dict(start.named_parameters())
    gpt2 = [name for name in parameters if name.startswith("gpt2.")]
    assert gpt2 and start.config.freeze_decoder is transformer
    assert [parameters[name].requires_grad for name in gpt2] == [not transformer] * len(gpt2)
    trained = load_model(out)
    assert gpt2_weights_unchanged(start, trained) is transformer
    groups = start.parameter_groups()
    assert changed_groups(start, trained, groups) == ({"mapper"} if transformer else {"mapper", "decoder"})
    # The CLIP vision tower is frozen in both: every one of its tensors is in the run as published.
    assert_clip_tower_unchanged(out, encoder)
    captioner = Captioner.from_pretrained(out, device="cpu")
    assert (captioner.model.config.mapper, captioner.model.config.prefix_length) == (
        ("transformer", 40) if transformer else ("mlp", 10)
    )
    # CLIP's own preprocessing, saved in the run: the same pixels as CLIP's image processor on real photos.
    assert_pixels_as_part(captioner.preprocessing, encoder)
    (result,) = captioner.caption([PHOTO], max_new_tokens=4, num_beams=2)
    assert len(result.captions[0].token_ids) <= 4


def test_at_lr_0_a_clipcap_run_with_every_group_trainable_keeps_both_parts(
    clip_parts: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    encoder, decoder = clip_parts
    out = tmp_path / "run"
    overrides = [f"model.encoder={encoder}", f"model.decoder={decoder}", f"data.train={FLICKR}", "data.max_length=20"]
    # A stage that trains every group overrides the recipe's frozen CLIP tower: lr 0 alone keeps the parts.
    overrides += ["train.lr=0", "train.warmup_steps=0", "train.stages=[{train: [all]}]"]
    summary = run_recipe(capsys, "flickr30k-clipcap.yaml", out, *overrides)
    assert summary["steps"] == 3
    assert_prefix_parts_unchanged(out, encoder, decoder)


# --- cnn-lstm and cnn-lstm-attention: a Hugging Face ResNet under a new LSTM


@pytest.fixture(scope="module", params=[*LAYOUTS, "t4-bottleneck"])
def resnet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ResNet image classifier, as microsoft/resnet-50 stores it, in one layout; with basic blocks, or with
    resnet-50's bottleneck blocks."""
    layout, _, layer_type = request.param.partition("-")
    directory = tmp_path_factory.mktemp(f"resnet-{request.param}") / "resnet"
    return save_resnet(directory, layout, layer_type=layer_type or "basic")


def assert_resnet_unchanged(run: Path, resnet: Path) -> None:
    """Every tensor of the ResNet (batch-norm statistics included) is in the run's weights, unchanged; its
    classifier head is not."""
    saved = part_weights(run)
    stored = {key: value for key, value in part_weights(resnet).items() if key.startswith("resnet.")}
    assert len(stored) > 20
    for key, tensor in stored.items():
        assert torch.equal(saved[f"encoder.{key.removeprefix('resnet.')}"], tensor), key
    assert not any("classifier" in key for key in saved)


@pytest.mark.parametrize("family", ["cnn-lstm", "cnn-lstm-attention"])
def test_cnn_lstm_from_a_resnet(resnet: Path, family: str, tmp_path: Path) -> None:
    model = create_model(family, encoder=str(resnet), vocab_size=50)
    model.save_pretrained(tmp_path)
    assert_resnet_unchanged(tmp_path, resnet)
    # The conv stages are frozen by default (their batch norms in eval mode, even in training mode).
    groups = model.parameter_groups()
    parameters = dict(model.named_parameters())
    assert not any(parameters[name].requires_grad for name in groups["encoder"])
    assert all(parameters[name].requires_grad for name in groups["decoder"])
    assert not model.train().encoder.training
    # Its regions: the last stage's 32 channels on a 4 x 4 grid (stride 8) of a 32 px image (the preprocessing's crop),
    # the feature map of transformers' own ResNetModel of the part (basic or bottleneck blocks).
    pixels = torch.randn(2, 3, 32, 32)
    reference = AutoModel.from_pretrained(resnet).eval()
    assert reference.config.layer_type == json.loads((resnet / "config.json").read_text())["layer_type"]
    with torch.no_grad():
        regions = model.eval().encode(pixels).tokens
        expected = reference(pixel_values=pixels).last_hidden_state.flatten(2).transpose(1, 2)
    assert regions.shape == (2, 16, 32)
    torch.testing.assert_close(regions, expected, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match=r"starts from a pretrained model\.encoder only"):
        create_model(family, encoder=str(resnet), decoder=str(resnet))


@pytest.mark.parametrize("recipe", ["flickr30k-resnet50-lstm.yaml", "flickr30k-resnet50-lstm-attention.yaml"])
def test_the_resnet50_lstm_recipes_train_from_parts(
    resnet: Path, recipe: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    # lr > 0 (the recipe's): the LSTM trains, the frozen ResNet (batch-norm statistics included) does not.
    overrides = [f"model.encoder={resnet}", f"data.train={FLICKR}", "train.warmup_steps=0"]
    start = start_of_run(recipe, *overrides)
    summary = run_recipe(capsys, recipe, out, *overrides)
    assert summary["steps"] == 3
    assert_resnet_unchanged(out, resnet)
    assert changed_groups(start, load_model(out), start.parameter_groups()) == {"decoder"}
    captioner = Captioner.from_pretrained(out, device="cpu")
    assert captioner.model.config.teacher_forcing_ratio == 0.9
    # A word vocabulary trained on the captions (the LSTM has no pretrained tokenizer).
    assert captioner.model.vocab_size == captioner.tokenizer.vocab_size <= 4096
    # The ResNet's own preprocessing (ConvNeXt: shorter edge to 36, centre 32 crop), saved in the run.
    assert_pixels_as_part(captioner.preprocessing, resnet)
    (result,) = captioner.caption([PHOTO], max_new_tokens=4, num_beams=2)
    assert len(result.captions[0].token_ids) <= 4


def test_at_lr_0_an_unfrozen_resnet_keeps_its_weights(
    resnet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    overrides = [f"model.encoder={resnet}", f"data.train={FLICKR}", "model.overrides={freeze_encoder: false}"]
    overrides.append("train.lr=0")
    start = start_of_run("flickr30k-resnet50-lstm.yaml", *overrides)
    assert all(parameter.requires_grad for parameter in start.parameters())
    summary = run_recipe(capsys, "flickr30k-resnet50-lstm.yaml", out, *overrides)
    assert summary["steps"] == 3
    saved = part_weights(out)
    stored = {key.removeprefix("resnet."): value for key, value in part_weights(resnet).items()}
    statistics = [key for key in stored if key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    weights = [key for key in stored if key not in statistics and not key.startswith("classifier.")]
    assert len(weights) > 20
    # Every ResNet weight trained at lr 0 and is unchanged ...
    assert all(torch.equal(saved[f"encoder.{key}"], stored[key]) for key in weights)
    # ... while its batch norms ran in training mode: their statistics moved, as an unfrozen encoder's do.
    assert not all(torch.equal(saved[f"encoder.{key}"], stored[key]) for key in statistics)


def test_vit_gpt2_from_the_vision_tower_of_a_clip(clip_parts: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, decoder = clip_parts
    model = create_model("vit-gpt2", encoder=str(encoder), decoder=str(decoder)).eval()
    assert type(model.ved.encoder).__name__ == "CLIPVisionModel"
    model.save_pretrained(tmp_path)
    assert_clip_tower_unchanged(tmp_path, encoder)
    assert not any(
        key.startswith("encoder.text_model.") for key in part_weights(tmp_path)
    )  # the text tower stays behind
    plain = VisionEncoderDecoderModel.from_pretrained(tmp_path).eval()
    pixels, ids = torch.randn(2, 3, 32, 32), torch.tensor([[0, 5, 9], [0, 7, 3]])
    with torch.no_grad():
        expected = plain(pixel_values=pixels, decoder_input_ids=ids).logits
        assert torch.allclose(load_model(tmp_path)(pixels, ids), expected, atol=1e-5)
        # Cross-attention over CLIP's CLS + 4 x 4 patches gives attention maps as for a ViT.
        assert model.attention_maps(pixels, ids).shape == (2, 3, 4, 4)
    assert model.preprocessing is not None and model.preprocessing.crop_from == 32
    # A run saved and reloaded preprocesses as CLIP's own image processor (shorter edge, centre crop, CLIP's mean
    # and std) on real photos.
    assert_reloaded_run_preprocesses_as(model, decoder, encoder, tmp_path / "captioner")


def assert_reloaded_run_preprocesses_as(model: torch.nn.Module, decoder: Path, encoder: Path, run: Path) -> None:
    """``model`` saved as a run with the decoder's tokenizer and reloaded: its pixels of real photos are those of the
    encoder part's own image processor (transformers' PIL backend), to 1e-6."""
    assert_pixels_as_part(reloaded_run(model, decoder, run).preprocessing, encoder)


@pytest.mark.parametrize(
    ("model_type", "leading"), [("deit", 2), ("beit", 1), ("dinov2", 1), ("siglip_vision_model", 0)]
)
def test_vit_gpt2_from_other_vision_transformers(
    model_type: str, leading: int, parts: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder = save_vision_transformer(tmp_path / model_type, model_type)
    model = create_model("vit-gpt2", encoder=str(encoder), decoder=str(parts[1])).eval()
    model.save_pretrained(tmp_path / "run")
    saved = part_weights(tmp_path / "run")
    assert all(torch.equal(saved[f"encoder.{key}"], value) for key, value in part_weights(encoder).items())
    pixels, ids = torch.randn(2, 3, 32, 32), torch.tensor([[0, 5, 9], [0, 7, 3]])
    with torch.no_grad():
        plain = VisionEncoderDecoderModel.from_pretrained(tmp_path / "run").eval()
        expected = plain(pixel_values=pixels, decoder_input_ids=ids).logits
        assert torch.allclose(load_model(tmp_path / "run")(pixels, ids), expected, atol=1e-5)
        # Patch tokens after `leading` others (CLS, DeiT's distillation token; none for SigLIP).
        assert model.encode(pixels).tokens.shape[1] == leading + 16
        maps = model.attention_maps(pixels, ids)
    assert maps.shape == (2, 3, 4, 4)
    assert torch.allclose(maps.sum(dim=(-2, -1)), torch.ones(2, 3))
    # The part's own preprocessing, saved in a run and reloaded: the same pixels as its image processor on real
    # photos (DINOv2's resizes the shorter edge, as facebook/dinov2-* store it).
    if model_type == "dinov2":
        assert json.loads((encoder / "preprocessor_config.json").read_text())["size"] == {"shortest_edge": 36}
    assert_reloaded_run_preprocesses_as(model, parts[1], encoder, tmp_path / "captioner")


@pytest.mark.parametrize("kind", ["vit", "clip", "dinov2"])
def test_a_part_whose_file_names_a_fast_image_processor(kind: str, parts: tuple[Path, Path], tmp_path: Path) -> None:
    """An encoder part saved by transformers 4 with ``use_fast=True`` names ``...ImageProcessorFast`` and writes the
    fast processors' call settings (device, return_tensors, ...): it loads without torchvision, and a run from it
    preprocesses as that processor's PIL backend, to 1e-6."""
    builders = {
        "vit": lambda: save_vit(tmp_path / "vit", "t5"),
        "clip": lambda: save_clip(tmp_path / "clip", "t5"),
        "dinov2": lambda: save_vision_transformer(tmp_path / "dinov2", "dinov2"),
    }
    encoder = builders[kind]()
    settings = json.loads(resave_as_fast_processor(encoder).read_text())
    assert settings["image_processor_type"].endswith("ImageProcessorFast")
    assert {"device", "return_tensors", "disable_grouping", "default_to_square"} <= set(settings)
    model = create_model("vit-gpt2", encoder=str(encoder), decoder=str(parts[1])).eval()
    assert_reloaded_run_preprocesses_as(model, parts[1], encoder, tmp_path / "run")
    # The run saves the same preprocessing under the plain processor's name, as transformers 5 would.
    saved = json.loads((tmp_path / "run" / "preprocessor_config.json").read_text())
    assert not saved["image_processor_type"].endswith("Fast")


@pytest.mark.parametrize(
    ("environment", "reason"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
        (
            {"HF_ENDPOINT": "http://127.0.0.1:9"},
            "cannot download from the Hugging Face Hub (offline?); pass a local directory, "
            "or set HF_HUB_OFFLINE=1 with a cached copy",
        ),
    ],
    ids=["offline", "unreachable"],
)
def test_a_parts_recipe_without_the_hub_fails_in_one_line(
    environment: dict[str, str], reason: str, tmp_path: Path
) -> None:
    recipe = "coco-vit-gpt2-from-parts"
    args = ["train", recipe, "--output", tmp_path / "run"]
    args += ["--set", f"data.train={COCO}", "--set", f"data.val={COCO}", "--set", "data.workers=0"]
    done = run_cli_process(args, {"HF_HOME": str(tmp_path / "hf")} | environment)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    # The decoder's tokenizer is the first part read.
    assert lines[-1] == f"captionkit: error: gpt2: {reason}", done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "COMPLETE").exists()


# --- defects: a GPT-2 part's token ids, a sharded checkpoint's bad shard, an encoder part without preprocessing


@pytest.mark.parametrize("family", ["vit-gpt2", "prefix-gpt2"])
@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("bos_token_id", None, "config.json names no bos_token_id"),
        ("eos_token_id", 10**6, "eos_token_id 1000000 is not a token id in its vocabulary [0, {size}): set it in"),
        # Left out of config.json, transformers fills in gpt2's 50256: no row of a smaller vocabulary.
        ("bos_token_id", "absent", "bos_token_id 50256 is not a token id in its vocabulary [0, {size})"),
        ("pad_token_id", -1, "pad_token_id -1 is not a token id in its vocabulary [0, {size})"),
    ],
)
def test_a_gpt2_part_whose_token_ids_do_not_fit_is_refused_naming_the_part_and_field(
    family: str, field: str, value: object, reason: str, parts: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder, decoder = parts
    changed = shutil.copytree(decoder, tmp_path / "gpt2")
    config = json.loads((changed / "config.json").read_text(encoding="utf-8"))
    config.pop(field) if value == "absent" else config.update({field: value})
    (changed / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError) as error:
        create_model(family, encoder=str(encoder), decoder=str(changed))
    assert error.value.source == str(changed)
    assert error.value.reason.startswith(reason.format(size=config["vocab_size"]))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("damage", ["header", "tail"])
def test_a_damaged_shard_is_named_not_the_index(damage: str, tmp_path: Path) -> None:
    vit, gpt2, run = t4_checkpoint(tmp_path)
    sharded = _resave_sharded(VisionEncoderDecoderModel.from_pretrained(run), run, tmp_path / "sharded")
    decoder = _resave_sharded(GPT2LMHeadModel.from_pretrained(gpt2), gpt2, tmp_path / "gpt2-sharded")
    for directory, load in (
        (sharded, lambda: Captioner.from_pretrained(sharded, device="cpu")),
        (decoder, lambda: create_model("vit-gpt2", encoder=str(vit), decoder=str(decoder))),
    ):
        shard = sorted(directory.glob("model-*.safetensors"))[1]
        data = shard.read_bytes()
        shard.write_bytes(data[:100] if damage == "header" else data[:-8])  # a copy or download cut short
        with pytest.raises(ModelLoadError) as error:
            load()
        assert error.value.source == str(directory)
        assert error.value.reason.startswith(f"{shard.name}: unreadable weights (")
        assert "\n" not in str(error.value)


def test_an_encoder_part_without_its_image_settings_says_what_to_copy(parts: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, decoder = parts
    bare = shutil.copytree(encoder, tmp_path / "vit")
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError) as error:
        create_model("vit-gpt2", encoder=str(bare), decoder=str(decoder))
    assert str(error.value) == (
        f"{bare / 'preprocessor_config.json'}: no such file: copy the base model's preprocessor_config.json here "
        "(its image size, mean and std are not guessed)"
    )
