"""The recipes ship in the package: `captionkit train NAME` from any directory, `_base_` among them, an unknown name
with the closest one, `--list-recipes`, and a packaged recipe's placeholder data paths named with how to change them."""

from __future__ import annotations

from pathlib import Path

import pytest

from _data import SHARED_DATA
from _helpers import run_cli
from captionkit.config import TrainConfig, load_recipe, load_train_config, packaged_recipes, resolve_recipe
from captionkit.errors import ConfigError

PACKAGE_RECIPES = Path(__file__).resolve().parents[1] / "src" / "captionkit" / "recipes"
NAMES = (
    "coco-blip-finetune",
    "coco-scst",
    "coco-vit-gpt2",
    "coco-vit-gpt2-from-parts",
    "demo",
    "flickr30k-clipcap",
    "flickr30k-clipcap-transformer",
    "flickr30k-git-finetune",
    "flickr30k-prefix-gpt2",
    "flickr30k-resnet-lstm",
    "flickr30k-resnet-lstm-attention",
    "flickr30k-resnet50-lstm",
    "flickr30k-resnet50-lstm-attention",
    "scenes-xe",
    "scenes-xe-scst",
    "senticap-style",
    "senticap-vit-gpt2",
    "senticap-vit-gpt2-from-parts",
)
COCO = SHARED_DATA / "coco" / "captions_val2017_subset.json"
VAL_HINT = "--set data.val=PATH, or --set \"data.val=''\" to hold out data.val_fraction of data.train"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory outside the repository (no configs/, no recipes)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_every_recipe_ships_in_the_package_and_nowhere_else() -> None:
    assert tuple(packaged_recipes()) == NAMES
    assert {path.parent for path in packaged_recipes().values()} == {PACKAGE_RECIPES}
    assert not (PACKAGE_RECIPES.parents[2] / "configs").exists()


@pytest.mark.parametrize("name", NAMES)
def test_every_packaged_recipe_parses_by_name_from_another_directory(name: str, elsewhere: Path) -> None:
    assert isinstance(load_train_config(name), TrainConfig)


@pytest.mark.parametrize("spelling", ["coco-vit-gpt2", "coco-vit-gpt2.yaml"])
def test_a_bare_name_with_or_without_yaml_is_the_packaged_recipe(spelling: str, elsewhere: Path) -> None:
    assert resolve_recipe(spelling) == PACKAGE_RECIPES / "coco-vit-gpt2.yaml"
    config = load_train_config(spelling)
    assert config.model.pretrained == "nlpconnect/vit-gpt2-image-captioning"
    assert [stage.train for stage in config.train.stages] == [
        ["cross_attention"],
        ["cross_attention", "decoder"],
        ["all"],
    ]


def test_a_file_on_disk_wins_over_the_packaged_recipe_of_its_name(elsewhere: Path) -> None:
    (elsewhere / "coco-scst.yaml").write_text("train:\n  steps: 7\n", encoding="utf-8")
    assert load_train_config("coco-scst.yaml").train.steps == 7  # the edited copy
    assert load_train_config("coco-scst").train.objective == "scst"  # no file named `coco-scst`: the packaged one
    # A directory of that name is no recipe file: the packaged recipe is used.
    (elsewhere / "demo").mkdir()
    assert resolve_recipe("demo") == PACKAGE_RECIPES / "demo.yaml"


def test_a_packaged_recipes_base_is_a_packaged_recipe(elsewhere: Path) -> None:
    # A file in the working directory with the base's name is not the base.
    (elsewhere / "flickr30k-clipcap.yaml").write_text("model:\n  family: cnn-lstm\n", encoding="utf-8")
    config = load_train_config("flickr30k-clipcap-transformer")
    assert (config.model.family, config.model.encoder) == ("prefix-gpt2", "openai/clip-vit-base-patch32")
    assert config.model.overrides["mapper"] == "transformer"


@pytest.mark.parametrize("base", ["flickr30k-clipcap", "flickr30k-clipcap.yaml"])
def test_a_users_recipe_can_build_on_a_packaged_one(base: str, elsewhere: Path) -> None:
    (elsewhere / "mine.yaml").write_text(f"_base_: {base}\ntrain:\n  steps: 9\n", encoding="utf-8")
    config = load_train_config("mine.yaml")
    assert (config.model.encoder, config.train.steps) == ("openai/clip-vit-base-patch32", 9)


def test_an_unknown_name_lists_the_recipes_and_the_closest(elsewhere: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["train", "coco-vit-gpt", "--output", elsewhere / "run"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        "captionkit: error: coco-vit-gpt: no such config file or packaged recipe (did you mean 'coco-vit-gpt2'? "
        f"recipes: {', '.join(NAMES)})\n"
    )


def test_a_missing_path_named_as_a_packaged_recipe_says_how_to_name_it(elsewhere: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_train_config("configs/demo.yaml")
    reason = "no such config file (a packaged recipe has its name: demo, without a directory)"
    assert str(caught.value) == f"configs/demo.yaml: {reason}"
    with pytest.raises(ConfigError) as caught:
        load_train_config(elsewhere / "mine.yaml")
    assert str(caught.value) == f"{elsewhere / 'mine.yaml'}: no such config file"
    # A _base_ that is neither a file beside the recipe nor a packaged recipe: the file it looked for, the closest.
    (elsewhere / "bad.yaml").write_text("_base_: coco-vit-gpt\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_train_config("bad.yaml")
    assert str(caught.value) == (
        f"coco-vit-gpt: no such config file (did you mean 'coco-vit-gpt2'? recipes: {', '.join(NAMES)})"
    )


def test_list_recipes_names_each_with_its_file(elsewhere: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(["train", "--list-recipes"], capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert [row[0] for row in rows] == list(NAMES)
    assert [Path(row[1]) for row in rows] == [PACKAGE_RECIPES / f"{name}.yaml" for name in NAMES]
    assert "copy its file" in err


def test_a_placeholder_left_as_it_is_names_its_key_and_the_way_out(
    elsewhere: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["train", "coco-vit-gpt2-from-parts", "--output", elsewhere / "run", "--set", f"data.train={COCO}"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    assert err == (
        "captionkit: error: data.val: data/coco/annotations/captions_val2017.json: no such file or directory "
        f"(the recipe's placeholder: {VAL_HINT})\n"
    )


@pytest.mark.parametrize(
    ("recipe", "assignments", "message"),
    [
        (
            "coco-vit-gpt2",
            [],
            "data.train: data/coco/annotations/captions_train2017.json: no such file or directory (the recipe's "
            "placeholder: --set data.train=PATH)",
        ),
        (
            "senticap-style",
            [],
            "data.train: data/coco/annotations/captions_train2014.json: no such file or directory (the recipe's "
            "placeholder: --set data.train=PATH or --set 'data.train=[PATH, PATH]')",
        ),
    ],
)
def test_placeholder_messages(recipe: str, assignments: list[str], message: str, elsewhere: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe, assignments)
    assert str(caught.value) == message


def test_a_missing_image_root_of_a_placeholder_is_named(elsewhere: Path) -> None:
    (elsewhere / "data" / "senticap").mkdir(parents=True)
    (elsewhere / "data" / "senticap" / "senticap.json").symlink_to(SHARED_DATA / "senticap" / "senticap_subset.json")
    with pytest.raises(ConfigError) as caught:
        load_recipe("senticap-vit-gpt2")
    assert str(caught.value) == (
        "data.train: data/coco/val2014: image root is not a directory (the recipe's placeholder: --set data.train=PATH)"
    )


def test_paths_the_user_gave_are_not_placeholders(elsewhere: Path) -> None:
    # Set with --set, or in the user's own YAML over a packaged base: left to the data reader's own error.
    config = load_recipe("coco-vit-gpt2-from-parts", ["data.train=missing.json", "data.val=''"])
    assert (config.data.train, config.data.val) == ("missing.json", "")
    (elsewhere / "mine.yaml").write_text(
        "_base_: coco-vit-gpt2-from-parts\ndata:\n  train: missing.json\n  val: also-missing.json\n", encoding="utf-8"
    )
    assert load_recipe("mine.yaml").data.val == "also-missing.json"
    # A placeholder whose data is there (the recipe's layout under the working directory) passes.
    annotations = elsewhere / "data" / "coco" / "annotations"
    annotations.mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (annotations / f"captions_{split}.json").symlink_to(COCO)
    assert load_recipe("coco-vit-gpt2-from-parts").data.val == "data/coco/annotations/captions_val2017.json"
