import re
from pathlib import Path

import pytest

from captionkit.config import TrainConfig, apply_overrides, from_dict, load_train_config
from captionkit.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file():
    config = load_train_config(None)
    assert config == TrainConfig()


def test_recipe_overrides_only_what_it_names(tmp_path):
    recipe = write(tmp_path / "r.yaml", "train:\n  lr: 1.0e-3\n  steps: 50\nmodel:\n  preset: tiny\n")
    config = load_train_config(recipe)
    assert config.train.lr == 1e-3 and config.train.steps == 50
    assert config.model.preset == "tiny"
    assert config.train.batch_size == TrainConfig().train.batch_size


def test_set_overrides_parse_values_as_yaml(tmp_path):
    recipe = write(tmp_path / "r.yaml", "train:\n  steps: 50\n")
    config = load_train_config(
        recipe,
        ["train.steps=7", "train.lr=3e-4", "data.cache_images=true", "model.overrides={decoder_layers: 3}"],
    )
    assert config.train.steps == 7
    assert config.train.lr == pytest.approx(3e-4)
    assert config.data.cache_images is True
    assert config.model.overrides == {"decoder_layers": 3}


@pytest.mark.parametrize(
    ("assignment", "styles"),
    [
        ("data.styles={}", {}),
        ("data.styles=null", {}),
        ("data.styles={neutral: 1.0}", {"neutral": 1.0}),
        ("data={styles: {positive: 1.0}}", {"positive": 1.0}),
    ],
)
def test_a_mapping_given_with_set_replaces_the_recipes(tmp_path, assignment, styles):
    recipe = write(tmp_path / "r.yaml", "data:\n  styles: {neutral: 0.5, positive: 0.25, negative: 0.25}\n")
    config = load_train_config(recipe, [assignment])
    assert config.data.styles == styles
    assert config.data.max_length == (TrainConfig().data.max_length)


def test_set_keeps_the_recipes_other_keys_in_a_section(tmp_path):
    recipe = write(tmp_path / "r.yaml", "data:\n  max_length: 30\n  styles: {neutral: 1.0}\n")
    config = load_train_config(recipe, ["data.styles={}", "model.overrides={decoder_layers: 2}"])
    assert (config.data.max_length, config.data.styles, config.model.overrides) == (30, {}, {"decoder_layers": 2})


def test_base_recipe_is_merged_section_by_section(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  steps: 10\n  lr: 0.5\nmodel:\n  preset: tiny\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain:\n  steps: 20\n")
    config = load_train_config(child)
    assert (config.train.steps, config.train.lr, config.model.preset) == (20, 0.5, "tiny")


@pytest.mark.parametrize(
    ("assignment", "where", "reason"),
    [
        ("train.stpes=3", "--set train.stpes", "unknown key"),
        ("nonsense.x=1", "--set nonsense.x", "unknown key"),
        ("train.steps=many", "--set train.steps", "expected an integer"),
        ("train.steps=1.5", "--set train.steps", "expected an integer"),
        ("data.cache_images=maybe", "--set data.cache_images", "expected true or false"),
        ("train.lr=fast", "--set train.lr", "expected a number"),
        ("train.seed=-1", "--set train.seed", "must be in [0, 4294967295], got -1"),
        ("train.seed=4294967296", "--set train.seed", "must be in [0, 4294967295], got 4294967296"),
        ("train.betas=[0.9]", "--set train.betas", "expected a list of 2 values"),
        ("train", "train", "expected --set key=value"),
        # A value that fits none of a union's types gets one reason, and a bad item of a list names that item.
        ("data.train=", "--set data.train", "expected a string or a list, got None"),
        ("data.train=[a.csv, 7]", "--set data.train[1]", "expected a string, got 7"),
    ],
)
def test_bad_overrides_name_the_key(assignment, where, reason):
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, [assignment])
    assert caught.value.source == where
    assert reason in caught.value.reason
    assert "\n" not in str(caught.value)


def test_a_typo_in_set_blames_the_command_line_and_one_in_the_file_the_file(tmp_path):
    recipe = write(tmp_path / "demo.yaml", "train:\n  steps: 10\n")
    with pytest.raises(ConfigError) as caught:
        load_train_config(recipe, ["train.lr=0.1", "train.stpes=10"])
    assert str(caught.value).startswith("--set train.stpes: unknown key (did you mean 'steps'? known: ")
    assert str(recipe) not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_train_config(write(tmp_path / "typo.yaml", "train:\n  stpes: 10\n"), ["train.lr=0.1"])
    # The file and the key apart: "typo.yaml.train.stpes" read as one name.
    assert caught.value.source == f"{tmp_path / 'typo.yaml'}: train.stpes"
    assert str(caught.value).startswith(f"{tmp_path / 'typo.yaml'}: train.stpes: unknown key (did you mean 'steps'?")


def test_a_section_that_is_not_a_mapping_stays_an_error_whatever_set_puts_into_it(tmp_path):
    # Without the check, `--set train.steps=1` would replace `train: 5` by {steps: 1} and hide the recipe's error.
    recipe = write(tmp_path / "r.yaml", "train: 5\nmodel:\n  overrides: [1]\n")
    for assignments in ([], ["train.steps=1"]):
        with pytest.raises(ConfigError) as caught:
            load_train_config(recipe, assignments)
        assert (caught.value.source, caught.value.reason) == (f"{recipe}: train", "expected a mapping, got int")
    with pytest.raises(ConfigError) as caught:
        load_train_config(write(tmp_path / "m.yaml", "model:\n  overrides: [1]\n"), ["model.overrides.x=1"])
    assert (caught.value.source, caught.value.reason) == (
        f"{tmp_path / 'm.yaml'}: model.overrides",
        "expected a mapping, got [1]",
    )
    # A section an earlier --set made a scalar is the command line's error.
    for assignments in (["train=5", "train.steps=1"], ["train.steps=1", "train=5"]):
        with pytest.raises(ConfigError) as caught:
            load_train_config(None, assignments)
        assert (caught.value.source, caught.value.reason) == ("--set train", "expected a mapping, got int")
    # A section the recipe leaves out, or one that is a mapping, takes the override.
    config = load_train_config(write(tmp_path / "ok.yaml", "model:\n  preset: tiny\n"), ["train.steps=1"])
    assert (config.train.steps, config.model.preset) == (1, "tiny")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("model.family", "lsmt", "unknown model family 'lsmt' (known: blip, cnn-lstm, cnn-lstm-attention, git, "),
        ("model.preset", "huge", "unknown vit-gpt2 preset 'huge' (known: tiny, small, base)"),
        ("model.position_init", "zeros", "unknown 'zeros' (known: random, sincos)"),
    ],
)
def test_the_model_section_is_checked_as_the_recipe_is_read(tmp_path, key, value, reason):
    # Before any data is read or model built; blamed on --set, or on the recipe file with the key inside it.
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, [f"{key}={value}"])
    assert caught.value.source == f"--set {key}" and caught.value.reason.startswith(reason)
    section, _, name = key.partition(".")
    recipe = write(tmp_path / "r.yaml", f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_train_config(recipe)
    assert caught.value.source == f"{recipe}: {key}" and caught.value.reason.startswith(reason)


def test_a_preset_is_not_checked_when_pretrained_weights_replace_it():
    config = load_train_config(None, ["model.preset=huge", "model.pretrained=some/checkpoint"])
    assert config.model.pretrained == "some/checkpoint"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_train_config(tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_train_config(bad)
    # PyYAML keeps the last of two equal keys: the run trained with lr 2e-3, and nothing said so.
    twice = write(tmp_path / "twice.yaml", "train:\n  lr: 1.0e-3\n  steps: 5\n  lr: 2.0e-3\n")
    with pytest.raises(ConfigError) as caught:
        load_train_config(twice)
    assert str(caught.value) == f"{twice}: invalid YAML (duplicate key 'lr' on line 4)"
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["model.overrides={decoder_layers: 1, decoder_layers: 2}"])
    assert str(caught.value) == "--set model.overrides: invalid value (duplicate key 'decoder_layers' on line 1)"
    listing = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_train_config(listing)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("train: " + "[" * 600 + "]" * 600 + "\n", "invalid YAML (nested too deeply)"),
        ("train:\n  steps: " + "9" * 5000 + "\n", "invalid YAML (Exceeds the limit (4300 digits)"),
    ],
)
def test_hostile_recipe_is_one_config_error(tmp_path, text, reason):
    recipe = write(tmp_path / "r.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_train_config(recipe)
    assert caught.value.source == str(recipe) and caught.value.reason.startswith(reason)
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["train=" + text.removeprefix("train:")])
    assert caught.value.source == "--set train"
    assert caught.value.reason.startswith(reason.replace("invalid YAML", "invalid value"))
    assert "\n" not in str(caught.value)


def test_base_loop_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_train_config(tmp_path / "a.yaml")


def test_round_trip_through_dict():
    config = load_train_config(None, ["train.steps=3", "model.preset=tiny"])
    assert from_dict(TrainConfig, config.to_dict()) == config


def test_apply_overrides_does_not_mutate_input():
    data = {"train": {"steps": 1}}
    apply_overrides(data, ["train.steps=2"])
    assert data == {"train": {"steps": 1}}


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["train.grad_acumulation=2"])
    assert caught.value.source == "--set train.grad_acumulation"
    assert "did you mean 'grad_accumulation'?" in caught.value.reason
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["train.stages=[{until: 3, train: [decoder]}]"])
    assert caught.value.source == "--set train.stages[0].until"
    assert "did you mean 'until_step'?" in caught.value.reason
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["train.zzz=1"])
    assert "did you mean" not in caught.value.reason


def test_stages_and_choices_are_checked_when_loaded():
    config = load_train_config(
        None, ["train.stages=[{until_step: 100, train: [cross_attention]}, {train: [all]}]", "train.schedule=linear"]
    )
    assert config.train.stages[0].until_step == 100 and config.train.stages[1].train == ["all"]
    assert from_dict(TrainConfig, config.to_dict()) == config
    for assignment, key in [
        ("train.schedule=step", "train.schedule"),
        ("train.best_metric=bleu", "train.best_metric"),
        ("train.grad_accumulation=0", "train.grad_accumulation"),
        ("train.label_smoothing=1.5", "train.label_smoothing"),
        ("train.stages=[{train: [decoder]}, {train: [all]}]", "train.stages[0].until_step"),
        ("train.stages=[{until_step: 3, train: []}]", "train.stages[0].train"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_train_config(None, [assignment])
        assert caught.value.source == f"--set {key}", assignment


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.val_fraction", 1.5, "data.val_fraction: must be in [0, 1), got 1.5"),
        ("data.max_length", 2, "data.max_length: must be at least 3"),
        ("data.workers", -1, "data.workers: must be 0 or more"),
        ("data.shuffle_buffer", 0, "data.shuffle_buffer: must be 1 or more, got 0"),
        ("train.lr", -1, "train.lr: must be 0 or more"),
        ("train.eval_images", -4, "train.eval_images: must be 0 or more"),
        ("train.grad_clip", -1, "train.grad_clip: must be 0 or more"),
        # 100,000 threads crashed OpenMP (a tokenizers panic and traceback) instead of a message.
        ("train.threads", 100_000, "train.threads: must be at most 1024, got 100000"),
        ("train.lr", float("inf"), "train.lr: must be a finite number, got inf"),  # trained to NaN weights, exit 0
        ("train.weight_decay", float("inf"), "train.weight_decay: must be a finite number, got inf"),
        ("tokenizer.vocab_size", -4, "tokenizer.vocab_size: must be at least 1, got -4"),  # was an OverflowError
        ("tokenizer.vocab_size", 0, "tokenizer.vocab_size: must be at least 1, got 0"),
    ],
)
def test_out_of_range_values_are_config_errors(key, value, message):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(TrainConfig, {section: {name: value}})


def test_the_scst_recipes_xe_run_left_as_its_placeholder_names_the_key(tmp_path, monkeypatch):
    """scenes-xe-scst starts from the scenes-xe run in ./runs/scenes-xe: without one (run from another directory, or
    before the XE stage) the loader took it for a hub id and said the hub could not be reached."""
    from captionkit.config import load_recipe

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_recipe("scenes-xe-scst", ["data.train=scenes"])
    assert str(caught.value) == (
        "model.pretrained: ./runs/scenes-xe: no such directory (the recipe's placeholder: --set model.pretrained=DIR, "
        "a finished run)"
    )
    # Given on the command line, or there: the run's own directory, as the recipe names it.
    assert load_recipe("scenes-xe-scst", ["model.pretrained=xe"]).model.pretrained == "xe"
    (tmp_path / "runs" / "scenes-xe").mkdir(parents=True)
    assert load_recipe("scenes-xe-scst").model.pretrained == "./runs/scenes-xe"
