"""SCST with style control (``data.styles``): each training sample is sampled, greedy baseline included, from its
record's style start token and rewarded with CIDEr-D against its image's references in that style, with that style's
document frequencies; a run trained without neutral never samples from the plain start token."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from _recipes import scenes_run
from captionkit.config import ScstSection, TrainSection, load_train_config
from captionkit.data.dataset import CaptionDataset, collate
from captionkit.data.records import CaptionRecord
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.decoding import DecodingConfig, generate
from captionkit.evaluation import score_captions
from captionkit.models.registry import create_model, preprocessing_for
from captionkit.text import train_bpe_tokenizer
from captionkit.text.styles import add_style_tokens
from captionkit.training import checkpoint as ckpt
from captionkit.training.loop import train
from captionkit.training.scst import StyleCiderReward, encode_for_sampling, sampling_config
from captionkit.training.setup import build_setup, drop_empty_captions, scst_records, scst_reward
from captionkit.training.steps import CrossEntropyStep, ScstStep

REFERENCES = {
    "positive": {
        "red": ["a lovely red circle", "a beautiful red circle on the left"],
        "blue": ["a nice blue square", "a lovely blue square at the top"],
        "green": ["a beautiful green triangle", "a cute small green triangle"],
    },
    "negative": {
        "red": ["an ugly red circle", "a dull red circle on the left"],
        "blue": ["a bad blue square", "an awful blue square at the top"],
        "green": ["a dirty green triangle", "an ugly small green triangle"],
    },
}
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}
# The batch: every image in both styles, the styles interleaved as a shuffled batch has them.
ORDER = [("red", "positive"), ("blue", "negative"), ("green", "positive"), ("red", "negative"), ("blue", "positive")]
ORDER.append(("green", "negative"))


def _records(tmp_path: Path) -> list[CaptionRecord]:
    records = []
    for name, colour in COLOURS.items():
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (32, 32), colour).save(path)
        for style, by_image in REFERENCES.items():
            records += [CaptionRecord(path, caption, style, name) for caption in by_image[name]]
    return records


def _cider(style: str, candidates: dict[str, str]) -> dict[str, float]:
    """Each image's CIDEr-D as ``captionkit.evaluation`` scores ``candidates`` against the style's references."""
    scored = score_captions(REFERENCES[style], candidates, metrics=["CIDEr"], allow_empty=True)
    return {image_id: figures["CIDEr"] for image_id, figures in scored.per_image.items()}


def _learn_the_captions(model, batch) -> None:
    """A few cross-entropy steps, so that samples share words with the references (rewards above zero)."""
    settings = TrainSection(batch_size=len(batch), grad_clip=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    step = CrossEntropyStep(model.train(), optimizer, settings, torch.device("cpu"))
    for number in range(30):
        step([batch], number)
    model.eval()


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_samples_start_from_each_samples_style_and_earn_that_styles_cider_d(tmp_path, baseline, single_thread):
    records = _records(tmp_path)
    config = load_train_config(None, ["train.objective=scst", "data.styles={positive: 0.5, negative: 0.5}"])
    tokenizer = train_bpe_tokenizer([r.caption for r in records] * 4, vocab_size=300, min_frequency=1)
    starts = add_style_tokens(tokenizer, config.data.styles)
    torch.manual_seed(0)
    model = create_model("vit-gpt2", "tiny", tokenizer).eval()
    reward = scst_reward(config, records)
    assert isinstance(reward, StyleCiderReward)

    # The training samples as the trainer reads them: the dataset starts each caption with its style's token.
    by_key = {(r.image_id, r.style): r for r in records}
    data = CaptionDataset([by_key[key] for key in ORDER], tokenizer, preprocessing_for(model))
    batch = collate([data[i] for i in range(len(ORDER))], tokenizer.pad_token_id)
    _learn_the_captions(model, batch)
    settings = ScstSection(num_samples=2 if baseline == "greedy" else 3, max_new_tokens=6, baseline=baseline)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train_settings = TrainSection(scst=settings, batch_size=len(ORDER), grad_clip=0.0)
    step = ScstStep(model, optimizer, train_settings, torch.device("cpu"), tokenizer, reward)
    [(_, sampled)] = step.rollouts([batch], step=5)
    k = settings.num_samples

    # Every sequence starts from its sample's style token (before: bos, which a positive/negative run never trains).
    expected_starts = torch.tensor([starts[style] for _, style in ORDER]).repeat_interleave(k)
    assert torch.equal(sampled.ids[:, 0], expected_starts)

    # The samples are what decoding image i alone from its style's token with its seed gives.
    encoded = encode_for_sampling(model, batch.pixel_values)
    texts: dict[tuple[str, str], list[str]] = {}
    for row, (image_id, style) in enumerate(ORDER):
        alone = replace(sampling_config(settings, step.seed(5)), start_token_id=starts[style])
        [samples] = generate(model, encoded=encoded.index_select(torch.tensor([row])), config=alone, image_offset=row)
        for j, hypothesis in enumerate(samples):
            want = [starts[style], *hypothesis.token_ids, *([tokenizer.eos_token_id] if hypothesis.finished else [])]
            got = sampled.ids[row * k + j][sampled.mask[row * k + j].bool()].tolist()
            assert got == want, (image_id, style, j)
        texts[(image_id, style)] = [tokenizer.decode(h.token_ids) for h in samples]

    # By hand: each sample scored by the evaluation against its style's references of these images (the training
    # references of that style, so the same document frequencies).
    for row, (image_id, style) in enumerate(ORDER):
        for j in range(k):
            expected = _cider(style, {name: texts[(name, style)][j] for name in COLOURS})[image_id]
            assert sampled.rewards[row, j].item() == pytest.approx(expected, abs=1e-6), (image_id, style, j)
    assert sampled.rewards.sum() > 0  # the check above compared some non-zero rewards

    if baseline == "greedy":  # the greedy caption from the style's token, scored against the style's references
        greedy = {}
        for row, (image_id, style) in enumerate(ORDER):
            decoding = DecodingConfig(max_new_tokens=6, start_token_id=starts[style])
            [[best]] = generate(model, encoded=encoded.index_select(torch.tensor([row])), config=decoding)
            greedy[(image_id, style)] = tokenizer.decode(best.token_ids), best.finished
        for row, (image_id, style) in enumerate(ORDER):
            expected = _cider(style, {name: greedy[(name, style)][0] for name in COLOURS})[image_id]
            assert sampled.baseline[row, 0].item() == pytest.approx(expected, abs=1e-6), (image_id, style)


def test_each_style_has_its_own_document_frequencies():
    reward = StyleCiderReward(REFERENCES | {"neutral": {"red": ["a red circle"]}})
    assert {style: r.scorer.num_documents for style, r in reward.by_style.items()} == {
        "positive": 3,
        "negative": 3,
        "neutral": 1,
    }
    # "lovely" is in 2 of the 3 positive reference sets; a pooled table would also count the negative ones' absence.
    assert reward.by_style["positive"].scorer.document_frequency[("lovely",)] == 2.0
    assert ("lovely",) not in reward.by_style["negative"].scorer.document_frequency
    got = reward(["red", "red"], [["a lovely red circle"], ["a lovely red circle"]], ["positive", "negative"])
    others = {"blue": "a blue square", "green": "a green triangle"}
    positive = score_captions(REFERENCES["positive"], {"red": "a lovely red circle", **others}, metrics=["CIDEr"])
    assert got[0, 0].item() == pytest.approx(positive.per_image["red"]["CIDEr"], abs=1e-6)
    assert got[0, 0] > got[1, 0]  # the same words earn more against the style whose references use them


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 24, 8, 0, seed=0, image_size=32)


def _settings(scenes: Path, *extra: str) -> list[str]:
    styles = "data.styles={positive: 0.5, negative: 0.5}"
    return scenes_run(scenes, styles, "train.batch_size=4", "train.eval_every=2", *extra)


def test_a_positive_negative_scst_run_trains_each_style_of_each_image(scenes, tmp_path, single_thread):
    xe = tmp_path / "xe"
    train(load_train_config(None, _settings(scenes, "train.steps=2")), xe)
    scst = ["train.objective=scst", f"model.pretrained={xe}", "train.steps=2", "train.scst.num_samples=2"]
    config = load_train_config(None, _settings(scenes, *scst, "train.scst.max_new_tokens=8"))
    # One training sample per image and style, each style in its share: SCST samples every style it trains.
    usable = drop_empty_captions(build_setup(config).train_records)[0]
    chosen = scst_records(config, usable)
    assert {(r.image_id, r.style) for r in chosen} == {(r.image_id, r.style) for r in usable}
    shares = {style: sum(r.style == style for r in chosen) for style in ("positive", "negative")}
    assert shares["positive"] == shares["negative"] > 0  # data.styles' equal shares
    result = train(config, tmp_path / "scst")
    assert result.steps == 2 and ckpt.is_complete(tmp_path / "scst")
    lines = [json.loads(line) for line in (tmp_path / "scst" / "metrics.jsonl").read_text().splitlines()]
    assert all(entry["reward"] >= 0.0 for entry in lines)
    assert {"val_cider", "val_cider_positive", "val_cider_negative"} <= set(lines[-1])
