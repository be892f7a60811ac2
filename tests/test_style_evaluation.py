"""The download-free sentiment classifier and the style table."""

from __future__ import annotations

import json
import random

import pytest

from _data import SHARED_DATA
from captionkit.data.synthetic import SceneOptions, generate_scenes, scene_captions
from captionkit.errors import InputError
from captionkit.evaluation.style import StyleClassifier, evaluate_styles, senticap_sentiment_words

SENTICAP = SHARED_DATA / "senticap" / "senticap.json"
COCO = SHARED_DATA / "coco" / "captions_val2017.json"


def _senticap(split: str) -> list[tuple[str, str]]:
    images = json.loads(SENTICAP.read_text())["images"]
    return [
        (s["raw"], "positive" if s["sentiment"] == 1 else "negative")
        for image in images
        if image["split"] in split.split("+")
        for s in image["sentences"]
    ]


def test_classifier_tells_senticap_sentiment_from_coco_captions():
    # Trained on SentiCap train+val and the COCO captions of half the val2017 images; tested on SentiCap test
    # (other images) and the other half of COCO. Measured: neutral 0.904, positive 0.906, negative 0.908 (0.838, 0.929,
    # 0.919 without the lexicon); 0.893, 0.909, 0.911 while unseen words still counted.
    train, test = _senticap("train+val"), _senticap("test")
    by_image: dict[int, list[str]] = {}
    for note in json.loads(COCO.read_text())["annotations"]:
        by_image.setdefault(note["image_id"], []).append(note["caption"])
    ids = sorted(by_image)
    neutral_train = [(c, "neutral") for i in ids[: len(ids) // 2] for c in by_image[i]]
    neutral_test = [(c, "neutral") for i in ids[len(ids) // 2 :] for c in by_image[i]]
    rng = random.Random(0)
    train += rng.sample(neutral_train, len(train))
    test += rng.sample(neutral_test, len(test))
    lexicon = senticap_sentiment_words(SENTICAP)
    assert lexicon["beautiful"] == "positive" and lexicon["ugly"] == "negative"
    assert lexicon["dead"] == "negative" and lexicon["nice"] == "positive"
    classifier = StyleClassifier.fit(train, lexicon=lexicon)
    predicted = classifier.predict([caption for caption, _ in test])
    for style in ("neutral", "positive", "negative"):
        pairs = [(p, s) for p, (_, s) in zip(predicted, test, strict=True) if s == style]
        accuracy = sum(p == s for p, s in pairs) / len(pairs)
        assert accuracy > 0.87, (style, accuracy)


def test_the_senticap_lexicon_holds_the_adjectives_of_its_pairs_not_the_nouns():
    # SentiCap marks both words of a pair ("a plate of delicious food": delicious and food). The nouns are content:
    # as style words they would count as sentiment and drop out of content matching.
    lexicon = senticap_sentiment_words(SENTICAP)
    assert {"delicious", "beautiful", "lonely", "dirty", "broken"} <= set(lexicon)
    assert not {"food", "lake", "ocean", "bathroom", "mug", "coffee", "garden"} & set(lexicon)
    neutral = [("a lake in the mountains", "neutral"), ("a mug of coffee on a table", "neutral")]
    styled = [("a beautiful lake in the mountains", "positive"), ("a dirty mug of coffee", "negative")]
    classifier = StyleClassifier.fit(neutral + styled, lexicon=lexicon)
    assert {"beautiful", "dirty"} <= classifier.style_words and not {"lake", "mug"} & classifier.style_words
    table = evaluate_styles(
        {"neutral": {"1": "a lake", "2": "a mug"}, "positive": {"1": "a beautiful ocean", "2": "a nice mug"}},
        classifier,
    )
    assert table["positive"].content_match == 0.5  # the ocean is not the lake; the mug is kept


def _scene_examples(count: int, seed: int) -> list[tuple[str, str]]:
    examples = []
    for scene in generate_scenes(count, seed, "train", SceneOptions(held_out_fraction=0.0)):
        for style, captions in scene_captions(scene).items():
            examples += [(c, style) for c in captions]
    return examples


def test_style_table_on_scene_captions(tmp_path):
    classifier = StyleClassifier.fit(_scene_examples(200, 0))
    assert {"lovely", "gloomy"} <= classifier.style_words and "circle" not in classifier.style_words
    classifier.save(tmp_path / "style.json")
    assert StyleClassifier.load(tmp_path / "style.json") == classifier

    scenes = generate_scenes(20, 5, "test", SceneOptions(held_out_fraction=0.0))
    captions = {str(i): scene_captions(scene) for i, scene in enumerate(scenes)}
    generated = {style: {i: c[style][0] for i, c in captions.items()} for style in ("neutral", "positive", "negative")}
    # A "model" that ignores the request for the negative style: it answers with the neutral caption.
    generated["negative"] = dict(generated["neutral"])
    references = {style: {i: c[style] for i, c in captions.items()} for style in ("neutral", "positive", "negative")}
    table = evaluate_styles(generated, classifier, references)

    assert table["positive"].style_accuracy == 1.0 and table["neutral"].style_accuracy == 1.0
    assert table["negative"].style_accuracy == 0.0
    assert table["positive"].content_exact == 1.0 and table["positive"].content_match == 1.0
    assert table["positive"].count == 20
    # The neutral caption scored against negative references loses the style word: lower CIDEr-D.
    assert table["positive"].cider_d > table["negative"].cider_d > 0


def test_content_match_catches_a_caption_about_something_else():
    classifier = StyleClassifier.fit(_scene_examples(200, 0))
    neutral = {"1": "a large red circle left of a small blue square", "2": "a small green triangle"}
    generated = {
        "positive": {"1": "a lovely large red circle left of a small blue square", "2": "a lovely blue square"}
    }
    scores = evaluate_styles(generated, classifier, neutral=neutral)["positive"]
    assert scores.content_match == 0.5 and scores.content_exact == 0.5
    assert scores.cider_d is None  # no references given


def test_bad_classifier_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="at least two styles"):
        StyleClassifier.fit([("a cat", "neutral"), ("a dog", "neutral")])
    bad = tmp_path / "style.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a style classifier file"):
        StyleClassifier.load(bad)
    with pytest.raises(InputError, match="not a SentiCap json"):
        senticap_sentiment_words(bad)
    bad.write_text("[" * 1500 + "]" * 1500)
    with pytest.raises(InputError, match=r"not a style classifier file \(invalid JSON: nested more than 64 levels"):
        StyleClassifier.load(bad)
    with pytest.raises(InputError, match=r"not a SentiCap json \(invalid JSON: nested more than 64 levels"):
        senticap_sentiment_words(bad)


def test_content_exact_reads_an_as_a():
    # "a small circle" with a style word becomes "an ugly small circle": the same content.
    classifier = StyleClassifier.fit(_scene_examples(200, 0))
    neutral = {"1": "a small green triangle"}
    generated = {"negative": {"1": "an ugly small green triangle"}}
    assert evaluate_styles(generated, classifier, neutral=neutral)["negative"].content_exact == 1.0


def test_style_accuracy_of_a_style_the_classifier_never_saw_is_none_not_zero():
    # SentiCap alone (the README's `evaluate --styles` command) trains the classifier on positive and negative
    # captions: it cannot read a caption as neutral, so a neutral accuracy would be 0 whatever the model wrote.
    classifier = StyleClassifier.fit(_senticap("train"))
    assert classifier.styles == ("positive", "negative")
    generated = {
        "neutral": {"1": "a dog on the grass", "2": "a cat on a couch"},
        "positive": {"1": "a happy dog on the beautiful grass", "2": "a cute cat on a nice couch"},
        "negative": {"1": "a dirty dog on the dead grass", "2": "an ugly cat on a broken couch"},
    }
    table = evaluate_styles(generated, classifier)
    assert table["neutral"].style_accuracy is None and table["neutral"].count == 2
    assert table["positive"].style_accuracy == table["negative"].style_accuracy == 1.0
    assert table["neutral"].as_dict()["style_accuracy"] is None


def _senticap_file(tmp_path, sentiments):
    images = [
        {
            "filename": f"COCO_val2014_{index:012d}.jpg",
            "split": "train",
            "sentences": [
                {"tokens": ["a", word, "dog"], "word_sentiment": [0, 1, 1], "sentiment": sentiment}
                for word, sentiment in sentiments
            ],
        }
        for index in range(2)
    ]
    path = tmp_path / "senticap.json"
    path.write_text(json.dumps({"images": images}))
    return path


def test_the_lexicon_reads_sentiments_as_the_senticap_reader_does(tmp_path):
    # The reader reads "1" as positive and "0" as negative; the lexicon read every value but 1 as negative.
    path = _senticap_file(tmp_path, [("lovely", "1"), ("gross", "0"), ("happy", 1), ("sad", 0)])
    lexicon = senticap_sentiment_words(path)
    assert lexicon == {"lovely": "positive", "gross": "negative", "happy": "positive", "sad": "negative"}
    # A sentence without a sentiment is no vote (it was a negative one).
    assert senticap_sentiment_words(_senticap_file(tmp_path, [("cute", 1), ("cute", None)])) == {"cute": "positive"}
    assert senticap_sentiment_words(_senticap_file(tmp_path, [("cute", 1), ("cute", False)])) == {"cute": "positive"}


@pytest.mark.parametrize(
    "document",
    [{"images": [{"file_name": "1.jpg", "id": 1}]}, {"images": {"a": 1}}, {"images": [{"sentences": [["x"]]}]}],
)
def test_a_lexicon_file_without_sentiments_is_one_line_error(tmp_path, document):
    path = tmp_path / "not-senticap.json"
    path.write_text(json.dumps(document))
    with pytest.raises(InputError, match="not a SentiCap json \\(no sentence carries a sentiment of 1 or 0\\)"):
        senticap_sentiment_words(path)


def test_a_missing_lexicon_file_says_it_cannot_be_read(tmp_path):
    with pytest.raises(InputError) as caught:
        senticap_sentiment_words(tmp_path / "nope.json")
    assert str(caught.value) == f"{tmp_path / 'nope.json'}: no such file"


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_a_lexicon_file_in_another_encoding_says_which_in_one_line(tmp_path, encoding):
    """A UTF-16 file (Windows' "Unicode") gave Python's codec message: "'utf-8' codec can't decode byte 0xff ..."."""
    path = _senticap_file(tmp_path, [("café", "1")])
    data = json.dumps(json.loads(path.read_text(encoding="utf-8")), ensure_ascii=False).encode(encoding)
    path.write_bytes(data)
    with pytest.raises(InputError) as caught:
        senticap_sentiment_words(path)
    offset = data.find(b"\xe9")
    reason = (
        "UTF-16 text: save it as UTF-8" if encoding == "utf-16" else f"not UTF-8 text (byte 0xe9 at offset {offset})"
    )
    assert str(caught.value) == f"{path}: {reason}"


def test_the_demo_reports_no_style_accuracy_for_a_style_its_classifier_never_saw():
    from pathlib import Path

    from captionkit.data.records import CaptionRecord
    from captionkit.demo import style_metrics

    train = [
        CaptionRecord(Path(f"{i}.png"), f"a {word} red circle", style, str(i))
        for i, (word, style) in enumerate([("lovely", "positive"), ("ugly", "negative")] * 3)
    ]
    tests = [CaptionRecord(Path("t.png"), "a red circle", "neutral", "t")]
    generated = {"neutral": ["a red circle"], "positive": ["a lovely red circle"], "negative": ["an ugly red circle"]}
    metrics = style_metrics(generated, tests, train)
    assert metrics["style_accuracy"] == {"neutral": None, "positive": 1.0, "negative": 1.0}
