"""The loop's features on tiny models: accumulation, precision, staged unfreezing, the feature cache, validation,
early stopping, logging, bad data."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from PIL import Image

from _data import SHARED_DATA
from _helpers import FAMILIES
from captionkit.config import StageSection, TrainSection, apply_overrides, load_train_config
from captionkit.data.records import CaptionRecord
from captionkit.data.sources import load_dataset
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.errors import ConfigError, InputError
from captionkit.training.curves import PANEL_HEIGHT, WIDTH
from captionkit.training.loop import train
from captionkit.training.run_log import ProgressLine
from captionkit.training.setup import build_setup, drop_empty_captions, seed_everything
from captionkit.training.stages import Stages


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 32, 8, 4, seed=1, image_size=32)


def config_for(scenes, *extra: str):
    # The loop's arithmetic is checked on the CPU, also where a GPU is present: exact comparisons, bf16 autocast on
    # the CPU, fp16 refused there. test_train_api and the resume tests run on the GPU when there is one.
    return load_train_config(
        None,
        [
            "train.device=cpu",
            f"data.train={scenes}",
            f"data.val={scenes}",
            "data.first_caption_only=true",
            "data.cache_images=true",
            "model.preset=tiny",
            "tokenizer.vocab_size=300",
            "train.steps=3",
            "train.batch_size=8",
            "train.warmup_steps=1",
            "train.eval_every=100",
            "train.eval_images=0",
            "train.log_every=1",
            "train.lr=3e-3",
            "train.threads=1",
            "train.tensorboard=false",
            *extra,
        ],
    )


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def trained_weights(config, tmp_path, name: str) -> tuple[dict[str, torch.Tensor], object]:
    seed_everything(config.train.seed)  # the same initial weights in every run
    setup = build_setup(config)
    result = train(config, tmp_path / name, setup=setup)
    return state_of(setup.model), result


def test_gradient_accumulation_matches_the_bigger_batch(scenes, tmp_path, single_thread):
    seed_everything(0)
    initial = state_of(build_setup(config_for(scenes)).model)
    big, big_result = trained_weights(config_for(scenes, "train.batch_size=8"), tmp_path, "big")
    accumulated, acc_result = trained_weights(
        config_for(scenes, "train.batch_size=4", "train.grad_accumulation=2"), tmp_path, "acc"
    )
    assert [e["loss"] for e in big_result.history] == pytest.approx([e["loss"] for e in acc_result.history], abs=1e-5)
    # Adam moves every weight by about lr whatever the gradient's size, so float noise in tiny gradients shows in
    # the weights: the two runs must agree to within 1% of how far training moved each tensor. A tensor whose true
    # gradient is zero (attention key biases: softmax ignores a shift shared by every key) moves by float noise
    # alone, about 1e-7 on some machines' kernels (measured 1.2e-7 on an H200 host's CPU): hence the 1e-6 floor.
    for name, value in big.items():
        moved = (value - initial[name]).abs().max().item()
        assert (value - accumulated[name]).abs().max().item() <= 0.01 * moved + 1e-6, name


def test_loader_workers_give_the_same_training(scenes, tmp_path, single_thread):
    in_process, _ = trained_weights(config_for(scenes, "train.steps=2"), tmp_path, "zero")
    workers, _ = trained_weights(config_for(scenes, "train.steps=2", "data.workers=1"), tmp_path, "one")
    for name, value in in_process.items():
        assert torch.equal(value, workers[name]), name


def test_bf16_autocast_on_cpu_trains_and_fp16_on_cpu_is_a_config_error(scenes, tmp_path, single_thread):
    fp32 = train(config_for(scenes, "train.steps=1"), tmp_path / "fp32")
    bf16 = train(config_for(scenes, "train.steps=1", "train.precision=bf16"), tmp_path / "bf16")
    assert bf16.train_loss == pytest.approx(fp32.train_loss, abs=0.05)  # same model, bf16 rounding only
    assert bf16.train_loss != fp32.train_loss
    with pytest.raises(ConfigError) as caught:
        train(config_for(scenes, "train.precision=fp16"), tmp_path / "fp16")
    assert caught.value.source == "train.precision" and "CUDA" in caught.value.reason
    with pytest.raises(ConfigError, match="unknown 'fp8'"):
        config_for(scenes, "train.precision=fp8")


def test_stages_choose_which_parameters_get_gradients(scenes, single_thread):
    setup = build_setup(config_for(scenes))
    model = setup.model.train()
    groups = model.parameter_groups()
    assert set(groups) == {"encoder", "embeddings", "cross_attention", "decoder"}
    named = dict(model.named_parameters())
    assert sorted(n for g in groups.values() for n in g) == sorted(named)  # every parameter, no overlap
    stages = Stages(
        model,
        [
            StageSection(until_step=2, train=["cross_attention"]),
            StageSection(until_step=4, train=["cross_attention", "decoder"]),
            StageSection(train=["all"]),
        ],
    )
    assert stages.encoder_always_frozen() is False
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    for step, expected in ((0, {"cross_attention"}), (3, {"cross_attention", "decoder"}), (9, set(groups))):
        stages.apply(step)
        model.zero_grad(set_to_none=True)
        model(pixels, ids, mask).sum().backward()
        with_grad = {name for name, p in named.items() if p.grad is not None}
        wanted = {name for group in expected for name in groups[group]}
        assert with_grad == wanted - {n for n in wanted if ".pooler." in n}  # ViT's pooler is never used


def test_without_stages_a_models_own_freezing_stands_and_enables_the_cache(scenes):
    model = build_setup(config_for(scenes)).model
    encoder = model.parameter_groups()["encoder"]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in encoder)
    stages = Stages(model, [])
    assert stages.apply(0) is False
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in encoder)
    assert stages.encoder_always_frozen()
    model.requires_grad_(True)
    assert not stages.encoder_always_frozen()


def test_unknown_stage_group_names_the_known_ones(scenes):
    setup = build_setup(config_for(scenes))
    with pytest.raises(ConfigError) as caught:
        Stages(setup.model, [StageSection(train=["attention"])])
    assert caught.value.source == "train.stages[0].train"
    assert "cross_attention" in caught.value.reason
    with pytest.raises(ConfigError, match="greater than 5"):
        config_for(scenes, "train.stages=[{until_step: 5, train: [decoder]}, {until_step: 5, train: [all]}]")


def test_a_last_stage_with_an_end_is_a_config_error_naming_it(scenes):
    # The last stage runs to the end of the run whatever until_step says: refused rather than ignored, as the recipe
    # is read.
    with pytest.raises(ConfigError) as caught:
        config_for(scenes, "train.stages=[{until_step: 2, train: [decoder]}, {until_step: 4, train: [all]}]")
    assert caught.value.source == "--set train.stages[1].until_step" and "leave until_step out" in caught.value.reason
    with pytest.raises(ConfigError) as caught:
        TrainSection(stages=[StageSection(until_step=2, train=["decoder"])])  # the one stage is the last
    assert caught.value.source == "train.stages[0].until_step"


@pytest.mark.parametrize(
    ("setting", "key", "reason"),
    [
        ("train.betas=[1.5, 0.9]", "train.betas[0]", "must be in [0, 1), got 1.5"),
        ("train.betas=[0.9, 1.0]", "train.betas[1]", "must be in [0, 1), got 1.0"),
        ("train.betas=[-0.1, 0.9]", "train.betas[0]", "must be in [0, 1), got -0.1"),
        ("train.min_lr_ratio=2", "train.min_lr_ratio", "must be at most 1"),
        (("train.best_metric=val_cider", "train.eval_images=0"), "train.best_metric", "needs train.eval_images > 0"),
    ],
)
def test_values_wrong_alone_are_refused_as_the_recipe_is_read(scenes, tmp_path, setting, key, reason):
    # Before: accepted by load_train_config and refused only when a run started (after the data and model loaded).
    settings = (setting,) if isinstance(setting, str) else setting
    with pytest.raises(ConfigError) as caught:
        config_for(scenes, *settings)
    assert caught.value.source == f"--set {key}" and reason in caught.value.reason
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(apply_overrides({}, list(settings))))
    with pytest.raises(ConfigError) as caught:
        load_train_config(recipe)
    assert caught.value.source == f"{recipe}: {key}" and reason in caught.value.reason


@pytest.mark.parametrize(
    ("setting", "key", "reason"),
    [
        ("model.overrides={decoder_positions: 8}", "data.max_length", "must be at most 8"),
        # 64 positions: a sample of 64 new tokens behind its start token would need 65.
        (("train.objective=scst", "train.scst.max_new_tokens=64"), "train.scst.max_new_tokens", "must be at most 63"),
        ("data.val_fraction=0", "train.patience", "early stopping needs validation captions"),
    ],
)
def test_values_a_run_cannot_use_are_one_config_error_naming_the_key(scenes, tmp_path, setting, key, reason):
    # Checks that need the model or the data, made as the run starts. Before: an IndexError in the first step past 8
    # positions (captions of up to data.max_length=40 tokens), patience without validation data accepted and ignored.
    train_only = tmp_path / "train.jsonl"  # the scenes' training images alone: no validation split to hold out
    rows = [json.loads(line) for line in scenes.read_text().splitlines()]
    rows = [row | {"image": str(scenes.parent / row["image"])} for row in rows if row["split"] == "train"]
    train_only.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = (setting,) if isinstance(setting, str) else setting
    data = [f"data.train={train_only}", "data.val=''"] if "data.val_fraction=0" in settings else []
    config = config_for(scenes, *data, "train.patience=1", *settings)
    with pytest.raises(ConfigError) as caught:
        train(config, tmp_path / "run")
    assert caught.value.source == key and reason in caught.value.reason


def test_staged_run_leaves_frozen_groups_untouched(scenes, tmp_path, single_thread):
    config = config_for(
        scenes, "train.stages=[{until_step: 2, train: [cross_attention]}, {train: [cross_attention, decoder]}]"
    )
    setup = build_setup(config)
    before = state_of(setup.model)
    groups = setup.model.parameter_groups()
    train(config, tmp_path / "run", setup=setup)
    after = state_of(setup.model)
    for group, changes in (("encoder", False), ("embeddings", False), ("cross_attention", True), ("decoder", True)):
        changed = [not torch.equal(before[n], after[n]) for n in groups[group] if ".pooler." not in n]
        assert all(changed) if changes else not any(changed), group


def test_feature_cache_gives_the_same_training_as_the_encoder(scenes, tmp_path, single_thread, caplog):
    frozen_encoder = "train.stages=[{train: [embeddings, cross_attention, decoder]}]"
    with caplog.at_level(logging.INFO, logger="captionkit.training"):
        cached, cached_result = trained_weights(config_for(scenes, frozen_encoder), tmp_path, "cached")
    assert "cached features of 32 images" in caplog.text
    plain, plain_result = trained_weights(
        config_for(scenes, frozen_encoder, "train.cache_features=false"), tmp_path, "plain"
    )
    assert [e["loss"] for e in cached_result.history] == pytest.approx([e["loss"] for e in plain_result.history])
    for name, value in plain.items():
        assert torch.allclose(value, cached[name], atol=1e-6), name


def test_validation_best_checkpoint_and_early_stopping(scenes, tmp_path, single_thread):
    # lr 0: the model never changes, so validation never improves after the first evaluation.
    config = config_for(
        scenes, "train.steps=10", "train.lr=0", "train.eval_every=2", "train.patience=1", "train.eval_images=4"
    )
    result = train(config, tmp_path / "run")
    assert result.stopped_early and result.steps == 4
    evaluated = [e for e in result.history if "val_loss" in e]
    assert [e["step"] for e in evaluated] == [2, 4]
    assert evaluated[0]["val_loss"] == evaluated[1]["val_loss"]
    assert evaluated[0]["val_perplexity"] == pytest.approx(2.718281828 ** evaluated[0]["val_loss"], rel=1e-4)
    assert evaluated[0]["val_cider"] == evaluated[1]["val_cider"]  # the same greedy captions of the same images
    best = json.loads((tmp_path / "run" / "checkpoints" / "best" / "trainer_state.json").read_text())
    assert best["loop"]["step"] == 2 and best["loop"]["best"] == evaluated[0]["val_loss"]


def test_a_run_that_stopped_early_stays_stopped_when_its_command_runs_again(scenes, tmp_path, single_thread):
    # lr 0: no evaluation improves on the first, so patience 1 stops the run at its second evaluation (step 4).
    settings = ("train.steps=10", "train.lr=0", "train.eval_every=2", "train.patience=1", "train.checkpoint_every=2")
    first = train(config_for(scenes, *settings), tmp_path / "run")
    assert first.stopped_early and first.steps == 4
    again = train(config_for(scenes, *settings), tmp_path / "run")  # e.g. a scheduler restarting the job
    assert again.resumed_from is not None and again.resumed_from.name == "step-000004"
    assert again.stopped_early and again.steps == 4
    assert [e["step"] for e in again.history] == [e["step"] for e in first.history]
    more_patience = train(config_for(scenes, *settings[:3], "train.patience=2", settings[4]), tmp_path / "run")
    assert more_patience.stopped_early and more_patience.steps == 6  # the third evaluation without a better one


def test_metrics_jsonl_curves_png_and_tensorboard_notice(scenes, tmp_path, single_thread, caplog):
    config = config_for(scenes, "train.eval_every=2", "train.steps=4", "train.tensorboard=true")
    with caplog.at_level(logging.INFO, logger="captionkit.training"):
        result = train(config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history and [e["step"] for e in lines] == [1, 2, 3, 4]
    assert all({"loss", "lr", "images_per_second"} <= set(e) for e in lines)
    with Image.open(tmp_path / "run" / "curves.png") as png:
        assert png.format == "PNG" and png.size == (WIDTH, 2 * PANEL_HEIGHT)  # loss + perplexity panels
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        notices = [r.message for r in caplog.records if "tensorboard" in r.message.lower()]
        assert notices == ["TensorBoard logs off: install captionkit[tensorboard] to get them"]
    else:
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_progress_line_shows_loss_lr_speed_and_eta(capsys):
    with ProgressLine(10, 0, enabled=True) as line:
        line.update(5, 1.23456, 3e-4, 12.5)
    err = capsys.readouterr().err
    assert "loss 1.2346" in err and "lr 3.00e-04" in err and "12.5 img/s" in err and "ETA" in err
    with ProgressLine(10, 0, enabled=False) as line:
        line.update(5, 1.0, 1e-3, 1.0)
    assert capsys.readouterr().err == ""


def test_unreadable_and_missing_images_are_skipped_and_counted(scenes, tmp_path, single_thread, caplog):
    config = config_for(scenes, "data.cache_images=false", "train.steps=5")  # 40 samples: all 32 records seen
    setup = build_setup(config)
    broken, missing = tmp_path / "broken.png", tmp_path / "missing.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    first = setup.train_records[0]
    setup.train_records[:2] = [
        CaptionRecord(broken, first.caption, image_id="broken"),
        CaptionRecord(missing, first.caption, image_id="missing"),
    ]
    setup.train_records.append(CaptionRecord(first.image_path, "   ", image_id="empty"))
    with caplog.at_level(logging.WARNING, logger="captionkit.training"):
        result = train(config, tmp_path / "run", setup=setup)
    assert result.steps == 5
    assert result.unreadable_images == 2 and result.skipped_samples >= 2
    assert result.empty_captions == 1
    assert "dropped 1 empty training caption\n" in caplog.text + "\n"
    assert str(broken) in caplog.text and str(missing) in caplog.text
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert set(state["unreadable_images"]) == {str(broken), str(missing)}


def test_a_run_with_no_readable_image_stops_with_one_error(scenes, tmp_path, single_thread):
    # Before, the loop skipped unreadable steps forever: it must give up after one pass over the data.
    config = config_for(scenes, "data.cache_images=false", "train.steps=5")
    setup = build_setup(config)
    setup.train_records = [
        CaptionRecord(tmp_path / f"missing{i}.png", record.caption, image_id=f"m{i}")
        for i, record in enumerate(setup.train_records[:6])
    ]
    with pytest.raises(InputError, match=r"no readable training image \(6 unreadable\)"):
        train(config, tmp_path / "run", setup=setup)


def test_drop_empty_captions():
    records = [CaptionRecord(tmp, caption) for tmp, caption in (("a.png", "a cat"), ("b.png", ""), ("c.png", " \t"))]
    kept, dropped = drop_empty_captions(records)  # type: ignore[arg-type]
    assert [r.caption for r in kept] == ["a cat"] and dropped == 2


def test_resumed_run_log_drops_later_entries_and_a_torn_line(tmp_path):
    from captionkit.training.run_log import RunLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.5}\n{"step": 6, "lo')  # killed mid-write
    log = RunLog(tmp_path, resume_step=4, tensorboard=False)
    log.write({"step": 5, "loss": 0.4})
    log.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4, 5]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_stage_that_freezes_the_encoder_leaves_every_buffer_alone(scenes, family, single_thread):
    # Batch norms in training mode update their running statistics even without gradients. cnn-lstm's ResNet has
    # them and must keep them in eval mode while frozen; the transformer families have only constant buffers.
    model = build_setup(config_for(scenes, f"model.family={family}", "tokenizer.vocab_size=100")).model.train()
    stages = Stages(model, [StageSection(until_step=1, train=["decoder"]), StageSection(train=["all"])])
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    before = {name: b.clone() for name, b in model.named_buffers()}
    for step in (0, 1):
        stages.apply(step)
        model(torch.randn(2, 3, 32, 32), ids, mask).sum().backward()
        changed = {name for name, b in model.named_buffers() if not torch.equal(b, before[name])}
        if step == 0 or not family.startswith("cnn-lstm"):
            assert not changed
        else:  # the ResNet's batch norms, unfrozen, follow the data again
            assert changed and all(name.startswith("encoder.") and ".normalization." in name for name in changed)


def test_empty_captions_the_reader_drops_are_counted_and_logged_as_data_check_counts_them(
    scenes, tmp_path, single_thread, caplog
):
    data = scenes.with_name("with-empty-captions.jsonl")  # beside the images its paths name
    lines = scenes.read_text(encoding="utf-8").splitlines()
    blank = [json.dumps(json.loads(line) | {"caption": " \t"}) for line in lines[:5]]
    data.write_text("\n".join(lines + blank) + "\n", encoding="utf-8")
    assert load_dataset(data).dropped == {"empty caption": 5}  # what `data check` reports
    with caplog.at_level(logging.WARNING, logger="captionkit.training"):
        result = train(config_for(scenes, f"data.train={data}", "train.steps=1"), tmp_path / "run")
    assert result.empty_captions == 5
    assert "dropped 5 empty training captions" in caplog.text
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["empty_captions"] == 5


def test_what_else_the_reader_drops_is_logged_naming_the_data(scenes, tmp_path, caplog):
    # A folder of real photos, one without its caption file: `data check` reports it dropped, and so must training.
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, photo in enumerate(sorted((SHARED_DATA / "flickr8k" / "Images").glob("*.jpg"))[:3]):
        (folder / photo.name).write_bytes(photo.read_bytes())
        if index:
            (folder / photo.name).with_suffix(".txt").write_text(f"a photo number {index}\n")
    assert load_dataset(folder).dropped == {"image without a caption file": 1}
    with caplog.at_level(logging.WARNING, logger="captionkit.training"):
        setup = build_setup(config_for(scenes, f"data.train={folder}"))
    assert len(setup.train_records) == 2
    assert [record.getMessage() for record in caplog.records] == [f"{folder}: dropped 1 x image without a caption file"]


def test_train_compile_compiles_the_trained_module_and_trains_the_same(scenes, tmp_path, single_thread, monkeypatch):
    plain = train(config_for(scenes, "train.steps=2"), tmp_path / "plain")
    compiled_modules = []
    real_compile = torch.compile

    def compile_eagerly(module, **options):
        # Dynamo traces the module for real; the eager backend skips inductor's C++ build (minutes on a CPU).
        compiled_modules.append(module)
        return real_compile(module, backend="eager", **options)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    compiled = train(config_for(scenes, "train.steps=2", "train.compile=true"), tmp_path / "compiled")
    assert [type(module).__name__ for module in compiled_modules] == ["VitGpt2Model"]
    assert [e["loss"] for e in compiled.history] == pytest.approx([e["loss"] for e in plain.history], abs=1e-5)
    with pytest.raises(ConfigError) as caught:
        config_for(scenes, "train.compile=sometimes")
    assert str(caught.value) == "--set train.compile: expected true or false, got 'sometimes'"


def test_train_device_is_checked(scenes, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown 'gpu'"):
        config_for(scenes, "train.device=gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as caught:
        train(config_for(scenes, "train.device=cuda"), tmp_path / "run")
    assert caught.value.source == "train.device" and "no CUDA GPU" in caught.value.reason
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_deterministic_runs_switch_deterministic_algorithms_on_for_the_run_only(scenes, tmp_path, single_thread):
    seen = []
    config = config_for(scenes, "train.steps=1", "train.deterministic=true")
    train(config, tmp_path / "run", log=lambda _: seen.append(torch.are_deterministic_algorithms_enabled()))
    assert seen == [True]
    assert not torch.are_deterministic_algorithms_enabled()


def test_resumed_run_log_keeps_a_diverged_loss_and_drops_a_hostile_line(tmp_path):
    from captionkit.training.run_log import RunLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": NaN}\n' + "[" * 1500 + "]" * 1500 + '\n{"step": 3, "loss": 1.0}\n')
    RunLog(tmp_path, resume_step=2, tensorboard=False).close()
    assert path.read_text() == '{"step": 1, "loss": NaN}\n'


def test_a_hostile_trainer_state_is_one_input_error_naming_it(tmp_path):
    from captionkit.training import checkpoint as ckpt

    directory = tmp_path / "checkpoint"
    directory.mkdir()
    (directory / ckpt.COMPLETE).touch()
    (directory / ckpt.TRAINER_STATE).write_text('{"step": ' + "9" * 5000 + "}")
    with pytest.raises(InputError) as error:
        ckpt.read_training_state(directory)
    expected = f"{directory / ckpt.TRAINER_STATE}: invalid JSON: a number longer than 4300 digits"
    assert str(error.value) == expected


def test_resuming_from_a_checkpoint_whose_weights_were_cut_says_how_to_go_on(scenes, tmp_path, single_thread):
    from captionkit.training import checkpoint as ckpt

    config = config_for(scenes, "train.steps=2", "train.checkpoint_every=2")
    train(config, tmp_path / "run")
    (tmp_path / "run" / ckpt.COMPLETE).unlink()  # as if the run had been stopped after its checkpoint
    weights = tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError) as error:
        train(config_for(scenes, "train.steps=4", "train.checkpoint_every=2"), tmp_path / "run", resume=True)
    assert str(error.value) == (
        f"{weights.parent}: model.safetensors: unreadable weights (Error while deserializing header: invalid header "
        "length); remove this checkpoint to resume from an earlier one, or pass --no-resume to start over"
    )


@pytest.mark.parametrize("damage", ["cut", "removed"])
def test_a_damaged_training_state_is_one_input_error_naming_it(tmp_path, damage):
    from safetensors.torch import save_file

    from captionkit.training import checkpoint as ckpt

    directory = tmp_path / "checkpoint"
    directory.mkdir()
    (directory / ckpt.COMPLETE).touch()
    (directory / ckpt.TRAINER_STATE).write_text('{"step": 4}')
    tensors = directory / ckpt.TRAINING_STATE
    save_file({"moments": torch.ones(64)}, str(tensors))
    assert ckpt.read_training_state(directory)[0] == {"step": 4}
    if damage == "cut":
        tensors.write_bytes(tensors.read_bytes()[:100])  # a copy cut short
    else:
        tensors.unlink()
    with pytest.raises(InputError) as error:
        ckpt.read_training_state(directory)
    reason = "Error while deserializing header" if damage == "cut" else "no such file)"  # safetensors' words
    hint = "remove this checkpoint to resume from an earlier one, or pass --no-resume to start over"
    assert str(error.value).startswith(f"{tensors}: cannot be read ({reason}")
    assert str(error.value).endswith(f"); {hint}") and "\n" not in str(error.value)
