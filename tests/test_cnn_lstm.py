"""cnn-lstm and cnn-lstm-attention: sizes from the definitions, attention and its penalty, scheduled sampling,
decoding through the engine, save/load, the frozen ResNet, and the word vocabulary they read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _families import (
    check_batched_equals_one_at_a_time,
    check_beam_finds_brute_force_best,
    check_beam_one_is_greedy,
    check_frozen_parts_get_no_gradient,
    check_round_trip,
    check_steps_equal_teacher_forcing,
    peaked,
    pixels,
    train_tiny,
)
from captionkit.decoding import DecodingConfig, generate
from captionkit.errors import ConfigError, ModelLoadError
from captionkit.models.base import Encoded
from captionkit.models.cnn_lstm import CnnLstmAttentionModel, CnnLstmConfig, CnnLstmModel
from captionkit.text import CaptionTokenizer, train_word_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
FAMILIES = {"cnn-lstm": CnnLstmModel, "cnn-lstm-attention": CnnLstmAttentionModel}


# --- parameter counts, computed from the layer sizes


def bn(channels: int) -> int:
    return 2 * channels  # weight and bias (running statistics are buffers)


def resnet_parameters(c: CnnLstmConfig) -> int:
    total = 7 * 7 * c.num_channels * c.encoder_embedding_size + bn(c.encoder_embedding_size)  # stem
    in_ch = c.encoder_embedding_size
    for stage, (out_ch, depth) in enumerate(zip(c.encoder_hidden_sizes, c.encoder_depths, strict=True)):
        for index in range(depth):
            stride = 2 if stage > 0 and index == 0 else 1
            if in_ch != out_ch or stride != 1:
                total += in_ch * out_ch + bn(out_ch)  # 1x1 projection shortcut
            if c.encoder_layer_type == "basic":
                total += 9 * in_ch * out_ch + bn(out_ch) + 9 * out_ch * out_ch + bn(out_ch)
            else:
                mid = out_ch // 4
                total += in_ch * mid + bn(mid) + 9 * mid * mid + bn(mid) + mid * out_ch + bn(out_ch)
            in_ch = out_ch
    return total


def decoder_parameters(c: CnnLstmConfig, attention: bool) -> int:
    v, e, h, a, f = c.vocab_size, c.embedding_size, c.hidden_size, c.attention_size, c.encoder_hidden_sizes[-1]
    lstm_input = e + f if attention else e
    total = v * e + (4 * h * lstm_input + 4 * h * h + 8 * h) + (h * v + v)  # embedding, LSTM cell, output
    if attention:
        total += 2 * (f * h + h) + (f * a + a) + (h * a + a) + (a + 1) + (h + 1)  # h0/c0, attention, gate
    else:
        total += f * e + e  # the image as the first input
    return total


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_base_preset_is_resnet50_with_frozen_conv_stages(family: str) -> None:
    with torch.device("meta"):
        model = FAMILIES[family].from_config("base", **IDS)
    # torchvision's ResNet-50 has 25,557,032 parameters; without its 2048 x 1000 classifier, 23,508,032.
    assert resnet_parameters(model.config) == count(model.encoder) == 23_508_032
    assert count(model) == 23_508_032 + decoder_parameters(model.config, model.attends)
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert (model.config.vocab_size, model.max_positions) == (10004, None)


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_matches_the_definition(family: str, preset: str) -> None:
    model = FAMILIES[family].from_config(preset, **IDS)
    assert count(model) == resnet_parameters(model.config) + decoder_parameters(model.config, model.attends)


@pytest.mark.parametrize(
    ("overrides", "source", "reason"),
    [
        ({"teacher_forcing_ratio": 1.5}, "teacher_forcing_ratio", "[0, 1]"),
        ({"encoder_depths": [1]}, "encoder_depths", "one depth per entry"),
        ({"encoder_depths": [1, 0]}, "encoder_depths[1]", "at least 1"),
        ({"encoder_hidden_sizes": "16,32"}, "encoder_hidden_sizes", "list of integers"),
        ({"encoder_layer_type": "wide"}, "encoder_layer_type", "basic, bottleneck"),
        ({"dropout": 1.0}, "dropout", "[0, 1)"),
        ({"attention_penalty": -1.0}, "attention_penalty", ">= 0"),
        ({"hidden_size": 0}, "hidden_size", "at least 1"),
        ({"hiden_size": 8}, "hiden_size", "unknown cnn-lstm config key"),
    ],
)
def test_bad_configs_are_config_errors(overrides: dict, source: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        CnnLstmModel.from_config("tiny", **IDS, **overrides)
    assert (raised.value.source, reason in raised.value.reason) == (source, True)


def test_bad_token_ids_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"eos_token_id: must be a token id in \[0, 256\)"):
        CnnLstmModel.from_config("tiny", **{**IDS, "eos_token_id": 256})


# --- attention, its penalty, scheduled sampling


def test_attention_weights_and_the_doubly_stochastic_penalty() -> None:
    model = peaked("cnn-lstm-attention", seed=0, std=0.1)
    input_ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        model(pixels(2), input_ids, mask)
    alphas = model.last_attention
    assert alphas is not None and alphas.shape == (2, 5, 16)  # 4 x 4 regions of a 32 px image
    torch.testing.assert_close(alphas.sum(dim=2), torch.ones(2, 5))
    # lambda * sum over regions of (1 - attention summed over the positions that predict a real token)^2.
    coverage = torch.stack([alphas[0, :4].sum(dim=0), alphas[1, :2].sum(dim=0)])
    expected = ((1 - coverage) ** 2).sum(dim=1).mean()
    penalty = model.auxiliary_loss()
    assert penalty is not None
    torch.testing.assert_close(penalty, expected)
    assert model.auxiliary_loss() is None  # handed out once


def test_the_penalty_has_gradients_and_the_plain_family_has_none() -> None:
    model = peaked("cnn-lstm-attention", seed=1, std=0.1, attention_penalty=0.5).train()
    model(pixels(2), torch.tensor([[1, 5, 6], [1, 7, 2]]))
    penalty = model.auxiliary_loss()
    assert penalty is not None and penalty > 0
    penalty.backward()
    assert model.hidden_query.weight.grad is not None and model.hidden_query.weight.grad.abs().sum() > 0
    plain = peaked("cnn-lstm", seed=1)
    plain(pixels(1), torch.tensor([[1, 5]]))
    assert plain.auxiliary_loss() is None and plain.last_attention is None


def test_the_gate_scales_the_context() -> None:
    model = peaked("cnn-lstm-attention", seed=2, std=0.1)
    input_ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        before = model(pixels(1), input_ids)
        # A gate shut (sigmoid -> 0): the regions no longer reach the words, only h0/c0 do.
        model.gate.bias.fill_(-1e4)
        shut = model(pixels(1), input_ids)
        other_image = model(pixels(1, seed=9), input_ids)
        model.init_h.weight.zero_(), model.init_c.weight.zero_()
        no_image = model(pixels(1), input_ids), model(pixels(1, seed=9), input_ids)
    assert not torch.allclose(before, shut)
    assert not torch.allclose(shut, other_image)
    torch.testing.assert_close(no_image[0], no_image[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_scheduled_sampling_feeds_the_models_own_words(family: str) -> None:
    images = pixels(3, 4)
    reference = torch.randint(3, 16, (3, 6), generator=torch.Generator().manual_seed(4))
    reference[:, 0] = 1
    # A frozen encoder keeps its batch norms in eval mode: train and eval mode then differ only by the ratio.
    forced = peaked(family, seed=3, teacher_forcing_ratio=1.0, freeze_encoder=True)
    with torch.no_grad():
        teacher = forced.train()(images, reference)
        assert torch.equal(teacher, forced.eval()(images, reference))  # ratio 1: always the reference
        own = peaked(family, seed=3, teacher_forcing_ratio=0.0, freeze_encoder=True).train()(images, reference)
    # Ratio 0: every input after bos is the model's own greedy word, so the logits are greedy decoding's.
    greedy = generate(forced, images, config=DecodingConfig(max_new_tokens=5))
    for row, found in enumerate(greedy):
        words = found[0].token_ids
        assert own[row, : len(words) + 1].argmax(dim=-1).tolist()[: len(words)] == words
    torch.testing.assert_close(own[:, 0], teacher[:, 0])
    assert not torch.allclose(own, teacher)


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_regions_are_left_out(family: str) -> None:
    model = peaked(family, seed=4)
    input_ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        regions = model.encode(pixels(1)).tokens
        mask = torch.arange(16)[None] < 10
        masked = model(None, input_ids, encoded=Encoded(regions, mask))
        kept = model(None, input_ids, encoded=Encoded(regions[:, :10]))
    torch.testing.assert_close(masked, kept)
    assert not torch.allclose(masked, model(None, input_ids, encoded=Encoded(regions)))


# --- decoding through the one engine


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_one_is_greedy(family: str) -> None:
    check_beam_one_is_greedy(peaked(family, seed=1))


@pytest.mark.parametrize("setting", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_one_at_a_time(family: str, setting: str) -> None:
    check_batched_equals_one_at_a_time(peaked(family, seed=6), setting)


@pytest.mark.parametrize("family", FAMILIES)
def test_wide_beam_finds_the_brute_force_best(family: str) -> None:
    check_beam_finds_brute_force_best(peaked(family, seed=3, vocab_size=5, eos_boost=1.0))


@pytest.mark.parametrize("family", FAMILIES)
def test_steps_equal_teacher_forcing(family: str) -> None:
    check_steps_equal_teacher_forcing(peaked(family, seed=8))


# --- save and load, the frozen encoder, training


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip(family: str, tmp_path: Path) -> None:
    check_round_trip(peaked(family, seed=9, teacher_forcing_ratio=0.75), tmp_path)


def test_a_checkpoint_of_the_other_family_is_refused(tmp_path: Path) -> None:
    peaked("cnn-lstm", seed=0).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="names family 'cnn-lstm', not 'cnn-lstm-attention'"):
        CnnLstmAttentionModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_frozen_resnet_gets_no_gradient_and_keeps_its_statistics(family: str) -> None:
    model = peaked(family, seed=10, std=0.05, freeze_encoder=True)
    check_frozen_parts_get_no_gradient(model, model.encoder)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_lowers_the_loss(family: str, tmp_path: Path) -> None:
    entries = train_tiny(family, tmp_path, "model.overrides={teacher_forcing_ratio: 0.9}")
    assert entries[-1]["loss"] < entries[0]["loss"]
    assert entries[-1]["val_loss"] < entries[0]["val_loss"]
    saved = CaptionTokenizer.load(tmp_path / "model")
    # The word vocabulary: every scene word is one token, plus the four specials.
    assert saved.hf.convert_ids_to_tokens(saved.encode("a large red circle")) == ["a", "large", "red", "circle"]
    assert saved.hf.unk_token == "<unk>"


# --- the word vocabulary


def test_word_tokenizer_keeps_the_most_frequent_words(tmp_path: Path) -> None:
    captions = ["A red circle.", "a red square", "a blue circle", "a dog", "a red cat"]
    tokenizer = train_word_tokenizer(captions, vocab_size=3)
    # Specials first, then words by frequency: a (5), red (3), circle (2); the rest is <unk>.
    tokens = tokenizer.hf.convert_ids_to_tokens(list(range(7)))
    assert tokens == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "circle"]
    ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.vocab_size)
    assert ids == (0, 1, 2, 7)
    assert tokenizer.encode("A red dog, circle") == [4, 5, 3, 3, 6]
    assert tokenizer.decode([1, 4, 5, 6, 2]) == "a red circle"
    tokenizer.save(tmp_path)
    loaded = CaptionTokenizer.load(tmp_path)
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id, loaded.vocab_size) == (1, 2, 0, 7)
    assert loaded.encode("a red zebra") == [4, 5, 3]


def test_the_attention_penalty_reaches_the_gradients(tmp_path: Path) -> None:
    two_steps = ("train.steps=2", "train.log_every=1", "train.eval_every=1", "train.lr=1e-2")
    without = train_tiny("cnn-lstm-attention", tmp_path / "a", "model.overrides={attention_penalty: 0.0}", *two_steps)
    weighted = train_tiny("cnn-lstm-attention", tmp_path / "b", "model.overrides={attention_penalty: 10.0}", *two_steps)
    # Same seed, data and start: the first step's caption loss is the same; the penalty changes the updates.
    assert weighted[0]["loss"] == pytest.approx(without[0]["loss"])
    assert abs(weighted[-1]["val_loss"] - without[-1]["val_loss"]) > 1e-3


def test_a_stage_that_freezes_the_resnet_keeps_its_batch_norm_statistics(tmp_path: Path) -> None:
    # The tiny preset trains its encoder; the stages freeze it for two steps, then train everything.
    from captionkit.config import load_train_config
    from captionkit.data.synthetic import write_synthetic_dataset
    from captionkit.training.loop import train
    from captionkit.training.setup import build_setup

    scenes = write_synthetic_dataset(tmp_path / "scenes", 16, 8, 4, seed=0, image_size=32)
    config = load_train_config(
        None,
        [
            "model.family=cnn-lstm",
            "model.preset=tiny",
            f"data.train={scenes}",
            "data.cache_images=true",
            "tokenizer.vocab_size=200",
            "train.steps=4",
            "train.batch_size=8",
            "train.warmup_steps=0",
            "train.log_every=1",
            "train.lr=3e-3",
            "train.stages=[{until_step: 2, train: [decoder]}, {train: [all]}]",
        ],
    )
    setup = build_setup(config)
    model = setup.model

    def statistics() -> dict[str, torch.Tensor]:
        # On the CPU: training moves the model to the GPU when there is one.
        return {name: b.cpu().clone() for name, b in model.encoder.named_buffers() if name.endswith("running_mean")}

    before, seen = statistics(), {}

    def log(entry: dict) -> None:
        seen[entry["step"]] = (model.encoder.training, statistics())

    train(config, tmp_path / "run", log=log, setup=setup)
    assert len(before) == 6  # the stem's, two per basic block, the second stage's shortcut
    assert [seen[step][0] for step in (1, 2, 3, 4)] == [False, False, True, True]
    for name, value in before.items():
        assert torch.equal(seen[2][1][name], value), name  # frozen: statistics untouched
        assert not torch.equal(seen[4][1][name], value), name  # unfrozen: they follow the data again


@pytest.mark.parametrize("field", ["attention_penalty", "teacher_forcing_ratio"])
def test_a_float_setting_given_as_a_whole_number_is_taken(field: str) -> None:
    """`--set model.overrides.attention_penalty=0` reads as the int 0, which the check for counts (layers, widths:
    at least 1) refused: "attention_penalty: must be at least 1, got 0"."""
    config = CnnLstmConfig.presets["tiny"].replace(**{field: 0})
    assert getattr(config, field) == 0.0 and type(getattr(config, field)) is float
    assert CnnLstmConfig.from_dict(config.to_dict()) == config
