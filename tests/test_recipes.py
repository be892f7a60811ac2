"""The packaged recipes (captionkit/recipes/): every dataset recipe parses; the five dataset recipes repeat no
default and train in a tiny form.

A tiny form is the recipe itself run through ``captionkit train`` with ``--set`` overrides that shrink it: the
family's tiny preset (or, for a hub checkpoint, a tiny model saved in the same layout), 3 steps of 2-caption
micro-batches, one thread, the real data in ../shared/data standing in for the full datasets. Everything else is
the recipe's own, and the tests check that it took effect (stages, accumulation, vocabulary, teacher forcing, a
trained encoder).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoImageProcessor, AutoTokenizer, BlipForConditionalGeneration, GitForCausalLM

from _data import SHARED_DATA
from _helpers import run_cli, run_cli_process
from _hub_models import hub_layout
from _recipes import COCO, FLICKR, PHOTO, SENTICAP, run_recipe
from captionkit import Captioner
from captionkit.config import TrainConfig, load_train_config, packaged_recipes, read_yaml
from captionkit.data.sources import load_records
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.images import load_image
from captionkit.models.registry import create_model, load_model, preprocessing_for, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
# The demo recipe has its own tests; the scenes XE -> SCST recipes (data named on the command line) belong to the
# SCST tests.
RECIPES = sorted(path for name, path in packaged_recipes().items() if name != "demo" and not name.startswith("scenes-"))


# The recipes this file trains in a tiny form.
TRAINED = (
    "senticap-vit-gpt2.yaml",
    "coco-vit-gpt2.yaml",
    "flickr30k-prefix-gpt2.yaml",
    "flickr30k-resnet-lstm.yaml",
    "flickr30k-resnet-lstm-attention.yaml",
    "coco-blip-finetune.yaml",
    "flickr30k-git-finetune.yaml",
)
# The recipes that start from pretrained parts, trained in a tiny form in tests/test_parts.py.
FROM_PARTS = (
    "coco-vit-gpt2-from-parts.yaml",
    "senticap-vit-gpt2-from-parts.yaml",
    "flickr30k-clipcap.yaml",
    "flickr30k-clipcap-transformer.yaml",
    "flickr30k-resnet50-lstm.yaml",
    "flickr30k-resnet50-lstm-attention.yaml",
)


def test_the_recipes_under_test_are_all_there() -> None:
    assert set(TRAINED) | set(FROM_PARTS) <= {path.name for path in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_parses(recipe: Path) -> None:
    config = load_train_config(recipe)
    assert isinstance(config, TrainConfig)
    assert config.data.train, "a recipe names its training data"


@pytest.mark.parametrize("name", TRAINED + FROM_PARTS)
def test_recipe_repeats_no_default(name: str) -> None:
    # A recipe (merged with its _base_) holds only what differs from config.py's defaults.
    repeated = _defaults_repeated(read_yaml(name), TrainConfig())
    assert not repeated, f"{name} repeats defaults: {repeated}"


def _defaults_repeated(data: dict[str, Any], defaults: Any, prefix: str = "") -> list[str]:
    repeated = []
    for key, value in data.items():
        default = getattr(defaults, key)
        if is_dataclass(default) and isinstance(value, dict):
            repeated += _defaults_repeated(value, default, f"{prefix}{key}.")
        elif _plain(default) == value:
            repeated.append(f"{prefix}{key}")
    return repeated


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def assert_loadable(output: Path, family: str) -> Captioner:
    """The run directory is a complete checkpoint that captions a real photo."""
    assert (output / "COMPLETE").is_file()
    captioner = Captioner.from_pretrained(output, device="cpu")
    assert captioner.model.family == family
    (result,) = captioner.caption([PHOTO], max_new_tokens=5)
    assert isinstance(result.caption, str)
    return captioner


def trainer_loop(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text())["loop"]


@pytest.fixture(scope="module")
def hub_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nlpconnect's stand-in: a tiny ViT + GPT-2 with its tokenizer and preprocessing, in the hub checkpoint layout."""
    directory = tmp_path_factory.mktemp("hub") / "tiny-vit-gpt2"
    captions = [record.caption for spec in (SENTICAP, COCO) for record in load_records(spec)]
    tokenizer = train_tokenizer("vit-gpt2", captions, 300)
    torch.manual_seed(0)
    model = create_model("vit-gpt2", "tiny", tokenizer)
    Captioner(model, tokenizer, preprocessing_for(model), device="cpu").save_pretrained(directory)
    return directory


def test_senticap_recipe_fine_tunes_with_accumulation(
    hub_like: Path, tmp_path: Path, single_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = load_train_config("senticap-vit-gpt2")
    assert recipe.model.pretrained == "nlpconnect/vit-gpt2-image-captioning"
    assert (recipe.train.precision, recipe.train.grad_accumulation) == ("fp16", 4)
    out = tmp_path / "run"
    # fp16 needs a CUDA GPU (a ConfigError on CPU, by design); bf16 autocast is the CPU's half precision.
    summary = run_recipe(
        capsys,
        "senticap-vit-gpt2.yaml",
        out,
        f"model.pretrained={hub_like}",
        f"data.train={SENTICAP}",
        "train.precision=bf16",
    )
    assert summary["steps"] == 3 and summary["val_cider"] is not None and summary["unreadable_images"] == 0
    # Each step drew the recipe's 4 micro-batches of 2 captions.
    assert trainer_loop(out / "checkpoints" / "step-000003")["cursor"] == 3 * 4 * 2
    captioner = assert_loadable(out, "vit-gpt2")
    assert captioner.model.vocab_size == load_model(hub_like).vocab_size  # the pretrained tokenizer was kept


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is the recipe's setting on a CUDA GPU")
def test_senticap_recipe_refuses_fp16_on_cpu(
    hub_like: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "senticap-vit-gpt2", "--output", tmp_path / "run"]
    data = ["--set", f"model.pretrained={hub_like}", "--set", f"data.train={SENTICAP}"]
    code, _, err = run_cli([*args, *data], capsys)
    assert code == 1
    assert "train.precision: fp16 needs a CUDA GPU" in err


def test_coco_recipe_unfreezes_in_three_stages(
    hub_like: Path, tmp_path: Path, single_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = load_train_config("coco-vit-gpt2")
    trained = [stage.train for stage in recipe.train.stages]
    assert trained == [["cross_attention"], ["cross_attention", "decoder"], ["all"]]
    # The recipe's stages, each one step long: step 1 trains stage 1, step 2 stage 2, step 3 stage 3.
    stages = [{"until_step": index + 1, "train": stage.train} for index, stage in enumerate(recipe.train.stages[:-1])]
    stages.append({"train": recipe.train.stages[-1].train})
    out = tmp_path / "run"
    summary = run_recipe(
        capsys,
        "coco-vit-gpt2.yaml",
        out,
        f"model.pretrained={hub_like}",
        f"data.train={COCO}",
        f"data.val={COCO}",
        f"train.stages={yaml.safe_dump(stages, default_flow_style=True).strip()}",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=3",
    )
    assert summary["steps"] == 3 and summary["val_cider"] is not None
    start = load_model(hub_like)
    groups = start.parameter_groups()
    after = [start] + [load_model(out / "checkpoints" / f"step-00000{step}") for step in (1, 2, 3)]
    changed = [_changed_groups(before, now, groups) for before, now in itertools.pairwise(after)]
    assert changed == [
        {"cross_attention"},
        {"cross_attention", "decoder"},
        {"cross_attention", "decoder", "encoder", "embeddings"},
    ]
    assert_loadable(out, "vit-gpt2")


def test_coco_blip_recipe_fine_tunes_a_hub_blip(
    tmp_path: Path, single_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = load_train_config("coco-blip-finetune")
    assert recipe.model.pretrained == "Salesforce/blip-image-captioning-base"
    hub = tmp_path / "blip-hub"
    hub_layout("blip", hub, legacy=True)  # the layout Salesforce's repository has
    # The recipe's two stages, the first one step long.
    stages = [{"until_step": 1, "train": recipe.train.stages[0].train}, {"train": recipe.train.stages[1].train}]
    out = tmp_path / "run"
    summary = run_recipe(
        capsys,
        "coco-blip-finetune.yaml",
        out,
        f"model.pretrained={hub}",
        f"data.train={COCO}",
        f"data.val={COCO}",
        f"train.stages={yaml.safe_dump(stages, default_flow_style=True).strip()}",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=3",
        "train.lr=1e-3",  # the recipe's 1e-5 moves bf16 weights of a tiny model too little to see in 3 steps
    )
    assert summary["steps"] == 3 and summary["val_cider"] is not None
    start = load_model(hub)
    groups = start.parameter_groups()
    after = [start] + [load_model(out / "checkpoints" / f"step-00000{step}") for step in (1, 2)]
    changed = [_changed_groups(before, now, groups) for before, now in itertools.pairwise(after)]
    assert changed == [
        {"embeddings", "cross_attention", "decoder"},
        {"embeddings", "cross_attention", "decoder", "encoder"},
    ]
    assert_loadable(out, "blip")
    # BLIP's fine-tuning prompt, fed before every caption (and kept out of the loss: tests/test_blip_prompt.py).
    run = Captioner.from_pretrained(out, device="cpu")
    assert run.model.prompt_ids == tuple(run.tokenizer.encode("a picture of"))  # type: ignore[attr-defined]
    # The run is in the hub layout: plain transformers loads it, with the weights the run trained.
    plain = BlipForConditionalGeneration.from_pretrained(out)
    trained = load_model(out)
    assert all(torch.equal(p, trained.hf.state_dict()[n]) for n, p in plain.state_dict().items())


def test_the_git_recipe_fine_tunes_a_hub_git_in_stages(
    tmp_path: Path, single_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = load_train_config("flickr30k-git-finetune")
    assert recipe.model.pretrained == "microsoft/git-base-coco"
    hub = tmp_path / "git-hub"
    hub_layout("git", hub, legacy=True)  # the layout microsoft/git-base-coco has
    # The recipe's two stages (the text side, then everything), the first one step long.
    stages = [{"until_step": 1, "train": recipe.train.stages[0].train}, {"train": recipe.train.stages[1].train}]
    out = tmp_path / "run"
    summary = run_recipe(
        capsys,
        "flickr30k-git-finetune.yaml",
        out,
        f"model.pretrained={hub}",
        f"data.train={FLICKR}",
        f"train.stages={yaml.safe_dump(stages, default_flow_style=True).strip()}",
        "train.checkpoint_every=1",
        "train.keep_checkpoints=3",
        "train.warmup_steps=0",
        "train.lr=1e-3",  # the recipe's 1e-5 moves a tiny model too little to see in 3 bf16 steps
    )
    assert summary["steps"] == 3 and summary["val_cider"] is not None
    start = load_model(hub)
    groups = start.parameter_groups()
    assert set(groups) == {"encoder", "embeddings", "decoder"}
    after = [start] + [load_model(out / "checkpoints" / f"step-00000{step}") for step in (1, 2)]
    changed = [_changed_groups(before, now, groups) for before, now in itertools.pairwise(after)]
    assert changed == [{"embeddings", "decoder"}, {"embeddings", "decoder", "encoder"}]
    assert_loadable(out, "git")
    # The run is in the hub layout: plain transformers loads it, with the weights the run trained.
    plain = GitForCausalLM.from_pretrained(out)
    trained = load_model(out)
    state = trained.hf.state_dict()
    assert all(torch.equal(parameter, state[name]) for name, parameter in plain.state_dict().items())
    assert set(plain.state_dict()) == set(state)
    assert _changed_groups(start, trained, groups) == set(groups)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GitForCausalLM"]
    # ... and its tokenizer and image processor, as the hub checkpoint's.
    caption = "a dog sitting on the grass"
    assert (
        AutoTokenizer.from_pretrained(out)(caption)["input_ids"]
        == AutoTokenizer.from_pretrained(hub)(caption)["input_ids"]
    )
    image = [load_image(PHOTO)]
    pixels = [
        AutoImageProcessor.from_pretrained(where)(image, return_tensors="np")["pixel_values"] for where in (out, hub)
    ]
    np.testing.assert_allclose(pixels[0], pixels[1], rtol=0, atol=1e-6)


def _changed_groups(before: torch.nn.Module, after: torch.nn.Module, groups: dict[str, list[str]]) -> set[str]:
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    return {group for group, names in groups.items() if any(not torch.equal(old[n], new[n]) for n in names)}


def test_flickr30k_prefix_recipe_trains(
    tmp_path: Path, single_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    recipe = load_train_config("flickr30k-prefix-gpt2")
    assert (recipe.model.family, recipe.model.preset) == ("prefix-gpt2", "base")
    summary = run_recipe(capsys, "flickr30k-prefix-gpt2.yaml", out, "model.preset=tiny", f"data.train={FLICKR}")
    assert summary["steps"] == 3 and summary["val_cider"] is not None
    captioner = assert_loadable(out, "prefix-gpt2")
    # The recipe trains the (randomly initialised) encoder, which the base preset would freeze.
    assert captioner.model.config.freeze_encoder is False and recipe.model.overrides["freeze_encoder"] is False


@pytest.mark.parametrize("name", ["flickr30k-resnet-lstm", "flickr30k-resnet-lstm-attention"])
def test_flickr30k_lstm_recipes_train(
    name: str, tmp_path: Path, single_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = load_train_config(name)
    assert recipe.model.preset == "base" and recipe.tokenizer.vocab_size == 4096
    out = tmp_path / "run"
    summary = run_recipe(capsys, f"{name}.yaml", out, "model.preset=tiny", f"data.train={FLICKR}")
    assert summary["steps"] == 3 and summary["val_cider"] is not None
    captioner = assert_loadable(out, recipe.model.family)
    config = captioner.model.config
    assert config.teacher_forcing_ratio == 0.9 and config.freeze_encoder is False
    # Flickr8k's 150 training images have fewer words than the cap; the vocabulary is all of them plus 4 specials.
    assert config.vocab_size == captioner.tokenizer.vocab_size <= 4096


@pytest.mark.parametrize(
    ("name", "measured"),
    [("flickr30k-prefix-gpt2", 0.84), ("flickr30k-resnet-lstm", 0.84), ("flickr30k-resnet-lstm-attention", 0.24)],
)
def test_recipe_settings_learn_the_synthetic_scenes(
    name: str, measured: float, tmp_path: Path, single_thread: None, capsys: pytest.CaptureFixture
) -> None:
    """The recipe's own optimizer, schedule and model settings (tiny preset), 150 steps on the synthetic scenes:
    validation CIDEr-D climbs from 0.0 (an untrained model, as the 3-step runs above show) above a floor of 0.15.
    ``measured``: what one CPU gave (6-16 s each)."""
    scenes = write_synthetic_dataset(tmp_path / "scenes", 48, 8, 4, seed=0, image_size=32)
    data = [f"data.train={scenes}", f"data.val={scenes}", "data.first_caption_only=true", "data.cache_images=true"]
    steps = ["train.steps=150", "train.batch_size=16", "train.warmup_steps=5", "train.eval_every=150"]
    evaluation = ["train.eval_images=16", "train.eval_batches=4", "train.checkpoint_every=150"]
    summary = run_recipe(capsys, f"{name}.yaml", tmp_path / "run", "model.preset=tiny", *data, *steps, *evaluation)
    assert summary["steps"] == 150
    assert summary["val_cider"] > 0.15, f"{name}: val CIDEr-D {summary['val_cider']} (measured {measured})"


OFFLINE_ERROR = "nlpconnect/vit-gpt2-image-captioning: not in the local Hugging Face cache and HF_HUB_OFFLINE is set"


def coco_layout(root: Path) -> None:
    """The COCO recipe's data paths under ``root``: links to the shared COCO subset."""
    coco = root / "data" / "coco"
    (coco / "annotations").mkdir(parents=True)
    subset = SHARED_DATA / "coco" / "captions_val2017_subset.json"
    for split in ("train2017", "val2017"):
        (coco / "annotations" / f"captions_{split}.json").symlink_to(subset)
        (coco / split).symlink_to(SHARED_DATA / "coco" / "val2017")


def test_a_hub_recipe_offline_fails_with_one_line(tmp_path: Path) -> None:
    # The COCO recipe as it is, run where its data paths exist, in a process of its own (HF_HUB_OFFLINE is read at
    # import time, and stray warnings would reach its stderr), with an empty Hugging Face cache.
    coco_layout(tmp_path)
    environment = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli_process(["train", "coco-vit-gpt2", "--output", "run"], environment, tmp_path, 120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"captionkit: error: {OFFLINE_ERROR}"]


def test_a_hub_recipe_offline_asks_nothing_of_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Why the failure above is quick: offline, no request is made (no probe, so none of the hub client's retries),
    # and the cache is looked into once.
    import huggingface_hub
    from huggingface_hub import constants

    coco_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # empty
    calls: list[str] = []
    fetch = huggingface_hub.snapshot_download
    fetches: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **options: Any) -> str:
        calls.append("snapshot_download")
        fetches.append(options)
        return fetch(repo_id, **options)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *_, **__: calls.append("probe"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    code, _, err = run_cli(["train", "coco-vit-gpt2", "--output", "run"], capsys)
    assert (code, err.strip().splitlines()) == (1, [f"captionkit: error: {OFFLINE_ERROR}"])
    assert calls == ["snapshot_download"]
    assert fetches[0]["local_files_only"] is True
