"""Training with style control: records mixed in the requested shares, captions start with their style token."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path

import pytest

from _data import SHARED_DATA
from _helpers import FAMILIES
from captionkit.config import DataSection, TrainConfig, from_dict
from captionkit.data.dataset import CaptionDataset
from captionkit.data.records import CaptionRecord, write_jsonl
from captionkit.data.sources import load_records
from captionkit.data.styles import first_caption_per_style, mix_styles
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.errors import ConfigError, InputError
from captionkit.images import Preprocessing
from captionkit.text import train_bpe_tokenizer
from captionkit.text.styles import add_style_tokens
from captionkit.training.setup import build_setup


def _records(counts: dict[str, int]) -> list[CaptionRecord]:
    return [
        CaptionRecord(Path(f"{style}{i}.png"), f"a {style} caption {i}", style=style, image_id=f"{style}{i}")
        for style, count in counts.items()
        for i in range(count)
    ]


def test_mix_styles_keeps_every_record_and_meets_the_shares():
    records = _records({"neutral": 100, "positive": 30, "negative": 10})
    mixed = mix_styles(records, {"neutral": 0.5, "positive": 0.25, "negative": 0.25}, seed=0)
    counts = Counter(r.style for r in mixed)
    # neutral (100 records at a 50% share) sets the length, 200 samples; the others repeat theirs up to 50 each.
    assert counts["negative"] == counts["positive"] == 50 and counts["neutral"] == 100
    for style, count in {"neutral": 100, "positive": 30, "negative": 10}.items():
        assert {r.image_id for r in mixed if r.style == style} == {f"{style}{i}" for i in range(count)}
    assert mix_styles(records, {"neutral": 2, "positive": 1, "negative": 1}, seed=0) == mixed  # shares are ratios
    assert mix_styles(records, {"neutral": 1, "positive": 1}, seed=1) != mix_styles(
        records, {"neutral": 1, "positive": 1}, seed=2
    )
    only = mix_styles(records, {"positive": 1}, seed=0)
    assert Counter(r.style for r in only) == {"positive": 30}


def test_bad_style_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"data.styles: unknown style 'joyful'"):
        DataSection(styles={"joyful": 1.0})
    with pytest.raises(ConfigError, match=r"data.styles.positive: must be a positive number"):
        DataSection(styles={"positive": 0})
    with pytest.raises(ConfigError, match=r"data.styles.neutral: must be a positive number, got inf"):
        DataSection(styles={"neutral": float("inf"), "positive": 1})  # YAML .inf: mix_styles failed with a traceback
    with pytest.raises(InputError, match="no negative captions"):
        mix_styles(_records({"neutral": 3}), {"neutral": 1, "negative": 1}, seed=0)


def test_recipe_style_names_are_read_in_any_case():
    """As a data file's style column and --style are: {Positive: 0.5} is positive (it was a config error)."""
    assert DataSection(styles={"Positive": 0.5, " NEGATIVE ": 0.5}).styles == {"positive": 0.5, "negative": 0.5}
    with pytest.raises(ConfigError, match=r"data.styles: the style 'positive' is given twice"):
        DataSection(styles={"Positive": 0.5, "positive": 0.5})


def test_first_caption_per_style_keeps_one_canonical_caption_per_style_and_image():
    records = [
        CaptionRecord(Path("a.png"), "one", style="neutral", image_id="a"),
        CaptionRecord(Path("a.png"), "two", style="neutral", image_id="a"),
        CaptionRecord(Path("a.png"), "a nice one", style="positive", image_id="a"),
        CaptionRecord(Path("a.png"), "a nicer one", style="positive", image_id="a"),
    ]
    assert [r.caption for r in first_caption_per_style(records)] == ["one", "a nice one"]


def test_captions_start_with_their_style_token_only_for_a_style_tokenizer():
    records = _records({"neutral": 1, "positive": 1, "negative": 1})
    tokenizer = train_bpe_tokenizer([r.caption for r in records] * 3, vocab_size=300, min_frequency=1)
    preprocessing = Preprocessing.for_size(8, 8)
    plain = CaptionDataset(records, tokenizer, preprocessing)
    assert {plain._ids[i][0] for i in range(3)} == {tokenizer.bos_token_id}
    ids = add_style_tokens(tokenizer)
    styled = CaptionDataset(records, tokenizer, preprocessing)
    assert [styled._ids[i][0] for i in range(3)] == [tokenizer.bos_token_id, ids["positive"], ids["negative"]]
    assert [styled._ids[i][1:] for i in range(3)] == [plain._ids[i][1:] for i in range(3)]


def test_senticap_style_recipe_adds_style_tokens_to_a_pretrained_checkpoint(tmp_path, single_thread):
    # The recipe in a tiny form: a tiny ViT-GPT2 saved as a checkpoint stands in for the hub model, the COCO and
    # SentiCap subsets in ../shared/data for the full sets.
    import torch

    from _data import SHARED_DATA
    from captionkit.api import Captioner
    from captionkit.config import TrainConfig, apply_overrides, from_dict, read_yaml
    from captionkit.models.registry import create_model
    from captionkit.training.checkpoint import save_checkpoint
    from captionkit.training.loop import train

    tokenizer = train_bpe_tokenizer(["a man riding a wave", "a beautiful sunny beach"] * 5, 300, True, 1)
    torch.manual_seed(0)
    pretrained = save_checkpoint(
        tmp_path / "hub", create_model("vit-gpt2", "tiny", tokenizer), tokenizer, Preprocessing.for_size(32, 32)
    )
    coco, senticap = SHARED_DATA / "coco", SHARED_DATA / "senticap"
    recipe = "senticap-style"
    data = apply_overrides(
        read_yaml(recipe),
        [
            f"model.pretrained={pretrained}",
            "train.precision=fp32",  # the recipe's fp16 needs a GPU
            "train.steps=2",
            "train.batch_size=4",
            "train.grad_accumulation=1",
            "train.eval_images=0",
            "train.best_metric=val_loss",
            "train.threads=1",
            "data.workers=0",
        ],
    )
    data["data"]["train"] = [
        str(coco / "captions_val2017_subset.json"),
        f"{senticap / 'senticap_subset.json'}?images={coco / 'val2017'}&images={senticap / 'images'}",
    ]
    config = from_dict(TrainConfig, data)
    assert config.data.styles == {"neutral": 0.5, "positive": 0.25, "negative": 0.25}
    train(config, tmp_path / "run", resume=False)

    tuned = Captioner.from_pretrained(tmp_path / "run", device="cpu")
    assert tuned.styles == ["neutral", "positive", "negative"]
    assert tuned.model.vocab_size == tokenizer.vocab_size + 2
    image = SHARED_DATA / "coco" / "val2017" / "000000000139.jpg"
    # Two steps teach no style words (test_style_cli checks that a model that learnt the styles uses them), but a
    # style starts the decoder from its own token instead of bos: the styled captions differ from the neutral one.
    # (Measured: neutral '' at -5.07, positive and negative the same 5 tokens at -4.82: their new tokens start alike.)
    results = {s: tuned.caption([image], style=s, num_beams=1, max_new_tokens=5)[0] for s in tuned.styles}
    for style in ("positive", "negative"):
        assert results[style].caption != results["neutral"].caption
        assert abs(results[style].score - results["neutral"].score) > 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_and_decodes_with_style_start_tokens(family, single_thread):
    import torch

    from captionkit.decoding import DecodingConfig, generate
    from captionkit.models.registry import create_model, train_tokenizer
    from captionkit.training.loss import caption_loss_total

    records = _records({"neutral": 2, "positive": 2, "negative": 2})
    tokenizer = train_tokenizer(family, [r.caption for r in records] * 3, 300)
    ids = add_style_tokens(tokenizer)
    torch.manual_seed(0)
    model = create_model(family, "tiny", tokenizer)
    size = model.config.image_size if hasattr(model.config, "image_size") else 32
    dataset = CaptionDataset(records, tokenizer, Preprocessing.for_size(size, size))
    rows = [dataset._ids[i] for i in range(len(records))]
    assert [row[0] for row in rows] == [tokenizer.bos_token_id] * 2 + [ids["positive"]] * 2 + [ids["negative"]] * 2
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    pixels = torch.randn(len(rows), 3, size, size)
    loss_sum, _ = caption_loss_total(model(pixels, input_ids, mask), input_ids, mask)
    loss = loss_sum / mask[:, 1:].sum()
    loss.backward()
    assert torch.isfinite(loss)
    # Decoding starts from the style's token: different starts, different first distributions.
    model.eval()
    first = {}
    for style in ("positive", "negative"):
        config = DecodingConfig(max_new_tokens=3, num_beams=2, start_token_id=ids[style])
        found = generate(model, pixels[:1], config=config)
        assert len(found) == 1 and found[0]
        state = model.init_state(model.encode(pixels[:1]))
        first[style] = model.step(torch.tensor([ids[style]]), state)[0]
    assert not torch.allclose(first["positive"], first["negative"])


def test_styled_captions_without_data_styles_are_reported(tmp_path, caplog):
    """A style column (or SentiCap) in data whose recipe sets no data.styles trains as plain captions: said, not
    silent (as information: the recipe senticap-vit-gpt2 does it on purpose); with data.styles, nothing to say."""
    data_file = write_synthetic_dataset(tmp_path / "scenes", 6, 2, 0, seed=0, image_size=32)
    # Counted over the captions that train: the train split's (the val split's were counted too, 8 scenes' for 6).
    styled = Counter(r.style for r in load_records(data_file) if r.style != "neutral" and r.split == "train")
    assert styled["positive"] and styled["negative"]
    for styles in ({}, {"neutral": 0.5, "positive": 0.25, "negative": 0.25}):
        caplog.clear()
        config = from_dict(
            TrainConfig,
            {
                "model": {"preset": "tiny"},
                "tokenizer": {"vocab_size": 300},
                "data": {"train": str(data_file), "styles": styles},
                "train": {"steps": 1, "batch_size": 4, "device": "cpu"},
            },
        )
        with caplog.at_level(logging.INFO, logger="captionkit.training"):
            build_setup(config)
        warned = [r.getMessage() for r in caplog.records if "train as plain captions" in r.getMessage()]
        if styles:
            assert warned == []
        else:
            assert warned == [
                f"{data_file}: its {styled['positive']} positive and {styled['negative']} negative captions train "
                "as plain captions, one mix of sentiments (data.styles, e.g. {neutral: 0.5, positive: 0.25, "
                "negative: 0.25}, would give each style a start token, for captions in a chosen style)"
            ]


def test_images_of_data_val_or_another_datasets_test_split_are_not_trained_on(caplog):
    """COCO captions (no splits) beside SentiCap in data.train: the COCO captions of SentiCap's test and val photos
    trained the model that evaluate then scored on them."""
    coco = SHARED_DATA / "coco"
    senticap = f"{SHARED_DATA / 'senticap' / 'senticap_subset.json'}?images={coco / 'val2017'}"
    config = from_dict(
        TrainConfig,
        {
            "model": {"preset": "tiny"},
            "tokenizer": {"vocab_size": 300},
            "data": {"train": [str(coco / "captions_val2017_subset.json"), senticap], "val": senticap},
            "train": {"steps": 1, "batch_size": 4, "device": "cpu"},
        },
    )
    held_out = {r.image_path for r in load_records(senticap) if r.split in ("val", "test")}
    coco_records = load_records(coco / "captions_val2017_subset.json")
    assert held_out & {r.image_path for r in coco_records}  # COCO's file holds SentiCap's held-out photos
    with caplog.at_level(logging.INFO, logger="captionkit.training"):
        setup = build_setup(config)
    assert not held_out & {r.image_path for r in setup.train_records}
    assert {r.image_path for r in coco_records} - held_out <= {r.image_path for r in setup.train_records}
    left_out = len(held_out & {r.image_path for r in coco_records})
    assert f"data.train: left out {left_out} images that are validation or test images" in caplog.text


def test_data_val_that_is_data_train_itself_trains_on_it_and_says_it_validates_on_training_images(caplog):
    captions = str(SHARED_DATA / "coco" / "captions_val2017_subset.json")  # no splits: every image is data.val's
    config = from_dict(
        TrainConfig,
        {
            "model": {"preset": "tiny"},
            "tokenizer": {"vocab_size": 300},
            "data": {"train": captions, "val": captions},
            "train": {"steps": 1, "batch_size": 4, "device": "cpu"},
        },
    )
    with caplog.at_level(logging.INFO, logger="captionkit.training"):
        setup = build_setup(config)
    assert len(setup.train_records) == len(load_records(captions))
    assert "data.val holds every image of data.train: the run validates on the images it trains on" in caplog.text


def test_the_test_split_of_data_val_is_not_trained_on_either(tmp_path):
    """data.train: every scene without its split label; data.val: the labelled file. Its test images were trained
    on (only its val split was held out), and `evaluate` on that file then scored them by default."""
    labelled = write_synthetic_dataset(tmp_path / "scenes", 12, 4, 4, seed=0, image_size=32)
    records = load_records(labelled)
    unlabelled = write_jsonl([dataclasses.replace(r, split=None) for r in records], tmp_path / "unsplit.jsonl")
    config = from_dict(
        TrainConfig,
        {
            "model": {"preset": "tiny"},
            "tokenizer": {"vocab_size": 300},
            "data": {"train": str(unlabelled), "val": str(labelled)},
            "train": {"steps": 1, "batch_size": 4, "device": "cpu"},
        },
    )
    trained = {r.image_path for r in build_setup(config).train_records}
    assert trained == {r.image_path for r in records if r.split == "train"}
