"""CLIPScore and RefCLIPScore against the paper's formula computed here with transformers' CLIP directly."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

from _data import real_photos
from _helpers import run_cli
from _hub_parts import save_clip
from captionkit.errors import ModelLoadError
from captionkit.evaluation import clipscore
from captionkit.evaluation.clipscore import ClipScorer, load_clip_scorer

IMAGES = real_photos(3)
CANDIDATES = {"a": "a man riding a wave", "b": "a dog runs through the grass", "c": "zebra"}
REFERENCES = {"a": ["a surfer on a wave", "a man surfing"], "b": ["a dog on grass"], "c": ["two zebras", "a horse"]}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """The tiny CLIP with CLIP's 77 text positions: its letter tokenizer spends a token per letter, and in the tiny
    CLIP's 16 every caption above was cut after its first letter, so the scores could not tell captions apart."""
    directory = save_clip(tmp_path_factory.mktemp("clip") / "clip", tokenizer=True)
    config = CLIPConfig.from_pretrained(directory)
    config.text_config.max_position_embeddings = 77
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(directory)
    return directory


def paper_scores(directory, images, candidates, references):
    """Hessel et al. 2021, eq. 1 and 2: unit embeddings, "A photo depicts " before every text, w = 2.5."""
    model = CLIPModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    pixels = CLIPImageProcessor.from_pretrained(directory)(images=images, return_tensors="pt").pixel_values

    def embed(captions):  # CLIPModel's forward returns unit-length image_embeds and text_embeds
        tokens = tokenizer(
            ["A photo depicts " + c for c in captions],
            padding=True,
            truncation=True,
            max_length=77,
            return_tensors="pt",
        )
        return model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)

    with torch.no_grad():
        image_embeds = embed(["x"]).image_embeds
        scores = {}
        for row, image_id in enumerate(candidates):
            caption = embed([candidates[image_id]]).text_embeds[0]
            refs = embed(references[image_id]).text_embeds
            clip_s = 2.5 * max(float(image_embeds[row] @ caption), 0.0)
            text_s = max(max(float(ref @ caption) for ref in refs), 0.0)
            scores[image_id] = (clip_s, 2 * clip_s * text_s / (clip_s + text_s))
    return scores


def test_clipscore_and_refclipscore_equal_the_papers_formula(clip_dir):
    images = [Image.open(path).convert("RGB") for path in IMAGES]
    scorer = ClipScorer(clip_dir, device="cpu")
    features = dict(zip(CANDIDATES, scorer.image_features(images), strict=True))
    corpus, per_image = scorer.score(features, CANDIDATES, REFERENCES)
    expected = paper_scores(clip_dir, images, CANDIDATES, REFERENCES)
    for image_id, (clip_s, ref_clip_s) in expected.items():
        assert per_image[image_id]["CLIPScore"] == pytest.approx(clip_s, abs=1e-4)
        assert per_image[image_id]["RefCLIPScore"] == pytest.approx(ref_clip_s, abs=1e-4)
    assert corpus["CLIPScore"] == pytest.approx(sum(s for s, _ in expected.values()) / 3, abs=1e-4)
    assert corpus["RefCLIPScore"] == pytest.approx(sum(r for _, r in expected.values()) / 3, abs=1e-4)
    assert 0 < corpus["CLIPScore"] <= 2.5
    # Captions that share their first words still score apart: the whole caption reaches CLIP.
    same_image = scorer.score({"a": features["a"], "b": features["a"]}, {"a": "a man", "b": "a dog"})[1]
    assert same_image["a"]["CLIPScore"] != pytest.approx(same_image["b"]["CLIPScore"], abs=1e-6)


def test_a_caption_longer_than_clips_77_tokens_is_cut_as_the_paper_cuts_it(clip_dir):
    # clip.tokenize(truncate=True): the first 76 tokens and the end token. The tiny tokenizer spends two tokens on
    # "ab" and 13 on "a photo depicts ", so 31 words of "ab" fill the 75 between the start and end tokens.
    scorer = ClipScorer(clip_dir, device="cpu")
    long, cut, shorter = scorer.text_features(["ab " * 500, "ab " * 31, "ab " * 30])
    assert torch.allclose(long, cut, atol=1e-6)
    assert not torch.allclose(long, shorter, atol=1e-3)


def test_without_references_only_clipscore(clip_dir):
    scorer = ClipScorer(clip_dir, device="cpu")
    features = dict(zip(["a"], scorer.image_features([Image.open(IMAGES[0]).convert("RGB")]), strict=True))
    corpus, per_image = scorer.score(features, {"a": "a man"})
    assert set(corpus) == {"CLIPScore"} and set(per_image["a"]) == {"CLIPScore"}


def test_a_directory_without_clip_weights_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelLoadError, match=rf"^{tmp_path}: not a CLIP model"):
        ClipScorer(tmp_path, device="cpu")
    # On the command line the error is the flag's, which names another model (the default fails offline).
    with pytest.raises(ModelLoadError) as caught:
        load_clip_scorer(tmp_path, device="cpu")
    assert caught.value.source == "--clip-model"
    assert caught.value.reason.startswith(f"{tmp_path}: not a CLIP model")


def test_score_cli_adds_clipscore_with_the_images_directory(clip_dir, tmp_path, capsys):
    names = {image_id: photo.name for image_id, photo in zip(CANDIDATES, IMAGES, strict=True)}
    refs, cands = tmp_path / "refs.json", tmp_path / "cands.json"
    refs.write_text(json.dumps({names[i]: REFERENCES[i] for i in names}))
    cands.write_text(json.dumps({names[i]: CANDIDATES[i] for i in names}))
    per_image = tmp_path / "per_image.json"
    args = ["score", "--refs", refs, "--cands", cands, "--metrics", "CIDEr,CLIPScore", "--clip-model", clip_dir]
    code, stdout, err = run_cli([*args, "--images", IMAGES[0].parent, "--per-image", per_image], capsys)
    assert code == 0, err
    expected = paper_scores(clip_dir, [Image.open(p).convert("RGB") for p in IMAGES], CANDIDATES, REFERENCES)
    scores = json.loads(stdout)
    assert scores["CLIPScore"] == pytest.approx(sum(s for s, _ in expected.values()) / 3, abs=1e-4)
    assert scores["RefCLIPScore"] == pytest.approx(sum(r for _, r in expected.values()) / 3, abs=1e-4)
    saved = json.loads(per_image.read_text())["per_image"]
    for image_id, (clip_s, ref_clip_s) in expected.items():
        assert saved[names[image_id]]["CLIPScore"] == pytest.approx(clip_s, abs=1e-4)
        assert saved[names[image_id]]["RefCLIPScore"] == pytest.approx(ref_clip_s, abs=1e-4)
        assert "CIDEr" in saved[names[image_id]]


def test_score_cli_clipscore_without_images_is_a_usage_error(clip_dir, tmp_path, capsys):
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"a.jpg": ["a cat"]}))
    code, _, err = run_cli(["score", "--refs", refs, "--cands", refs, "--metrics", "CLIPScore"], capsys)
    assert code == 1
    assert err.strip() == "captionkit: error: --images: CLIPScore needs the directory of the images"


def test_texts_are_embedded_in_batches_with_the_same_result(clip_dir, monkeypatch):
    # A split's references all in one forward pass would not fit in memory (COCO val: 25,000 of them).
    scorer = ClipScorer(clip_dir, device="cpu")
    features = dict(zip(CANDIDATES, scorer.image_features([Image.open(p).convert("RGB") for p in IMAGES]), strict=True))
    whole = scorer.score(features, CANDIDATES, REFERENCES)
    rows: list[int] = []
    embed = scorer.model.get_text_features

    def counted(input_ids, attention_mask):
        rows.append(len(input_ids))
        return embed(input_ids=input_ids, attention_mask=attention_mask)

    monkeypatch.setattr(scorer.model, "get_text_features", counted)
    monkeypatch.setattr(clipscore, "TEXT_BATCH", 2)
    batched = scorer.score(features, CANDIDATES, REFERENCES)
    assert rows == [2, 1, 2, 2, 1]  # 3 candidates, then 5 references, 2 a pass
    assert batched[0] == pytest.approx(whole[0], abs=1e-6)
    for image_id in CANDIDATES:
        assert batched[1][image_id] == pytest.approx(whole[1][image_id], abs=1e-6)


def test_score_cli_clipscore_needs_only_the_images_of_its_candidates(clip_dir, tmp_path, capsys):
    # As pycocoevalcap, `score` scores the images that have a candidate; the others need no file in --images.
    refs, cands, photos = tmp_path / "refs.json", tmp_path / "cands.json", tmp_path / "photos"
    photos.mkdir()
    (photos / IMAGES[0].name).write_bytes(IMAGES[0].read_bytes())
    refs.write_text(json.dumps({photo.name: ["a photo"] for photo in IMAGES}))
    cands.write_text(json.dumps({IMAGES[0].name: CANDIDATES["a"]}))
    args = ["score", "--refs", refs, "--cands", cands, "--metrics", "CLIPScore", "--clip-model", clip_dir]
    code, stdout, err = run_cli([*args, "--images", photos], capsys)
    assert code == 0, err
    scorer = ClipScorer(clip_dir, device="cpu")
    features = {"a": scorer.image_features([Image.open(IMAGES[0]).convert("RGB")])[0]}
    expected, _ = scorer.score(features, {"a": CANDIDATES["a"]}, {"a": ["a photo"]})
    assert json.loads(stdout)["CLIPScore"] == pytest.approx(expected["CLIPScore"], abs=1e-6)
    assert "2 of the 3 reference images have none" in err


def test_loading_the_clip_model_shows_no_transformers_progress_bars(clip_dir, capfd):
    """`score --metrics ...,CLIPScore` printed transformers' "Loading weights" bar among its own stderr lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    capfd.readouterr()
    ClipScorer(clip_dir, device="cpu")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting comes back
