"""The metrics beside the COCO ones, against their definitions, with the expected numbers worked out by hand on
tiny inputs: CLIPScore and RefCLIPScore (Hessel et al. 2021), perplexity, the diversity statistics and style
accuracy."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from _data import real_photos
from _helpers import CAPTIONS, FAMILIES, tiny_model
from _hub_parts import save_clip
from captionkit.api import Captioner
from captionkit.data.records import CaptionRecord
from captionkit.evaluation import evaluate_captions
from captionkit.evaluation.clipscore import ClipScorer
from captionkit.evaluation.style import StyleClassifier, evaluate_styles
from captionkit.images import Preprocessing
from captionkit.model_evaluation import dataset_perplexity
from captionkit.models.registry import train_tokenizer
from captionkit.text.styles import add_style_tokens
from captionkit.training.checkpoint import save_checkpoint

# --- Style accuracy: multinomial naive Bayes, uniform priors, add-one smoothing --------------------------------------

# Neutral: a 3, dog 2, runs 2, cat 1, sits 1, fast 1 (10 tokens); positive: a 1, lovely 1, dog 1 (3 tokens).
# Vocabulary: 7 words + 1 unseen slot, so P(w | neutral) = (count + 1) / 18 and P(w | positive) = (count + 1) / 11.
STYLED = [
    ("A dog runs.", "neutral"),
    ("a cat sits", "neutral"),
    ("a dog runs fast", "neutral"),
    ("a lovely dog", "positive"),
]


def test_naive_bayes_likelihoods_are_add_one_counts_over_the_shared_vocabulary():
    classifier = StyleClassifier.fit(STYLED)
    assert classifier.styles == ("neutral", "positive")
    assert classifier.log_likelihood["neutral"]["a"] == pytest.approx(math.log(4 / 18))
    assert classifier.log_likelihood["positive"]["lovely"] == pytest.approx(math.log(2 / 11))
    assert classifier.unseen == pytest.approx({"neutral": math.log(1 / 18), "positive": math.log(1 / 11)})
    # "lovely dog": neutral log(1/18 * 3/18), positive log(2/11 * 2/11); uniform priors add nothing.
    assert classifier.scores_of_tokens(["lovely", "dog"]) == pytest.approx(
        {"neutral": math.log(3 / 18**2), "positive": math.log(4 / 11**2)}
    )
    # A lexicon word counts lexicon_weight more times: lovely 1 + 2 in 5 positive tokens, so 4 / (5 + 8).
    weighted = StyleClassifier.fit(STYLED, lexicon={"lovely": "positive"}, lexicon_weight=2)
    assert weighted.log_likelihood["positive"]["lovely"] == pytest.approx(math.log(4 / 13))


def test_words_no_style_was_trained_on_are_no_evidence_for_the_smaller_style():
    """Each unknown word scored log(1/18) for neutral and log(1/11) for positive: "a zebra next to a giraffe" was
    positive only because fewer positive captions were trained on, against the uniform priors' purpose."""
    classifier = StyleClassifier.fit(STYLED)
    # Only "a" (twice) is known: neutral 2 log(4/18) > positive 2 log(2/11).
    assert classifier.scores_of_tokens(["a", "zebra", "next", "to", "a", "giraffe"]) == pytest.approx(
        {"neutral": 2 * math.log(4 / 18), "positive": 2 * math.log(2 / 11)}
    )
    # Nothing known: a tie, which goes to the earlier style, neutral.
    assert classifier.predict(["a zebra next to a giraffe", "Zebras!", "a lovely zebra"]) == [
        "neutral",
        "neutral",
        "positive",
    ]
    table = evaluate_styles({"positive": {"1": "a lovely dog", "2": "a dog runs", "3": "giraffes"}}, classifier)
    assert table["positive"].style_accuracy == pytest.approx(1 / 3)  # share of captions classified positive


# --- CLIPScore and RefCLIPScore -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """The tiny CLIP with CLIP's 77 text positions (its letter tokenizer spends a token a letter)."""
    directory = save_clip(tmp_path_factory.mktemp("clip") / "clip", tokenizer=True)
    config = CLIPConfig.from_pretrained(directory)
    config.text_config.max_position_embeddings = 77
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(directory)
    # The hub's own preprocessor layout (openai/clip-vit-base-patch32's, sizes shrunk): shorter edge, then centre crop.
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": 32, "width": 32},
                "do_center_crop": True,
                "do_convert_rgb": True,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "CLIPImageProcessor",
                "resample": 3,
                "rescale_factor": 0.00392156862745098,
                "size": {"shortest_edge": 32},
            }
        )
    )
    return directory


def test_clipscore_formulas_on_hand_made_embeddings(clip_dir, monkeypatch):
    """Unit vectors in the plane, so every cosine is known: w = 2.5, negative cosines count 0 (image-text and
    caption-reference, as the paper's eq. 2 has it), RefCLIP-S the harmonic mean, corpus figures the mean."""
    scorer = ClipScorer(clip_dir, device="cpu")
    texts = {
        "cand a": (0.6, 0.8),  # cos 0.6 with image a: CLIP-S 1.5
        "ref a1": (0.8, 0.6),  # cos 0.96 with cand a
        "ref a2": (-1.0, 0.0),  # cos -0.6
        "cand b": (0.6, -0.8),  # cos -0.8 with image b: CLIP-S 0
        "ref b": (-0.6, 0.8),  # cos -1
        "cand c": (0.6, 0.8),  # cos 1 with image c: CLIP-S 2.5
        "ref c": (-0.6, -0.8),  # cos -1: 0, so RefCLIP-S 0 (clipscore's code, without the clamp, would give -3.33)
    }
    monkeypatch.setattr(scorer, "text_features", lambda batch: torch.tensor([texts[t] for t in batch]))
    images = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]), "c": torch.tensor([0.6, 0.8])}
    candidates = {"a": "cand a", "b": "cand b", "c": "cand c"}
    corpus, per_image = scorer.score(images, candidates, {"a": ["ref a1", "ref a2"], "b": ["ref b"], "c": ["ref c"]})
    ref_a = 2 * 1.5 * 0.96 / (1.5 + 0.96)
    assert per_image["a"] == pytest.approx({"CLIPScore": 1.5, "RefCLIPScore": ref_a})
    assert per_image["b"] == {"CLIPScore": 0.0, "RefCLIPScore": 0.0}
    assert per_image["c"] == pytest.approx({"CLIPScore": 2.5, "RefCLIPScore": 0.0})
    assert corpus == pytest.approx({"CLIPScore": 4.0 / 3, "RefCLIPScore": ref_a / 3})


def letter_id(word: str, index: int) -> int:
    """The tiny CLIP tokenizer's id of ``word[index]``: a letter (2..27), or a word's last letter "x</w>" (28..53)."""
    return ord(word[index]) - ord("a") + (28 if index == len(word) - 1 else 2)


@torch.no_grad()
def test_clip_embeddings_are_the_projected_towers_at_unit_length_with_the_papers_prefix(clip_dir):
    """Each embedding by hand from CLIP's parts: the image tower's pooled output projected, the text tower's output
    at the end token projected, both scaled to length 1; "A photo depicts " before the caption, lower-cased by
    CLIP's tokenizer; pixels as CLIP's image processor makes them from a photo that is not square."""
    scorer = ClipScorer(clip_dir, device="cpu")
    model = scorer.model
    photo = Image.open(real_photos(1)[0]).convert("RGB")
    assert photo.width != photo.height
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=[photo], return_tensors="pt").pixel_values
    image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)[0]
    image = image / image.norm()
    assert torch.allclose(scorer.image_features([photo])[0], image, atol=1e-5)

    words = ["a", "photo", "depicts", "a", "dog"]
    ids = [0, *(letter_id(word, i) for word in words for i in range(len(word))), 1]  # bos ... eos
    hidden = model.text_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    text = model.text_projection(hidden)
    text = text / text.norm()
    assert scorer.tokenizer("A photo depicts a dog").input_ids == ids
    assert torch.allclose(scorer.text_features(["a dog"])[0], text, atol=1e-5)
    corpus, _ = scorer.score({"x": image}, {"x": "a dog"})
    assert corpus["CLIPScore"] == pytest.approx(2.5 * max(float(image @ text), 0.0), abs=1e-5)


# --- Perplexity --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_perplexity_of_styled_captions_leaves_out_the_style_token_and_keeps_the_end_token(
    family, tmp_path, single_thread
):
    """exp(total NLL / total predicted tokens) over all captions (not a mean of per-caption perplexities): each
    caption fed from its style's start token, which is given and not predicted; its end token is predicted."""
    tokenizer = train_tokenizer(family, list(CAPTIONS) * 10, 300)
    starts = add_style_tokens(tokenizer)
    directory = save_checkpoint(
        tmp_path / "m", tiny_model(family, 0, tokenizer), tokenizer, Preprocessing.for_size(32, 32)
    )
    captioner = Captioner.from_pretrained(directory, device="cpu")
    photo = real_photos(1)[0]
    records = [
        CaptionRecord(photo, "a dog runs", style="positive", image_id="1"),
        CaptionRecord(photo, "a cat sits on a red couch", style="negative", image_id="1"),
        CaptionRecord(photo, "a dog", style="neutral", image_id="1"),
    ]
    pixels = torch.from_numpy(captioner.preprocessing(captioner.load_images([photo])))
    model = captioner.model
    total, count = 0.0, 0
    for record in records:
        start = starts.get(record.style, tokenizer.bos_token_id)
        ids = [start, *tokenizer.encode(record.caption), tokenizer.eos_token_id]
        state = model.init_state(model.encode(pixels))
        for previous, target in pairwise(ids):
            log_probs, state = model.step(torch.tensor([previous]), state)
            total -= float(log_probs.log_softmax(-1)[0, target])
        count += len(ids) - 1
    assert count == sum(len(tokenizer.encode(r.caption)) + 1 for r in records)
    assert dataset_perplexity(captioner, records, batch_size=2) == pytest.approx(math.exp(total / count), rel=1e-5)


# --- Diversity and length ------------------------------------------------------------------------------------------


def test_diversity_statistics_by_hand_from_raw_captions():
    """Counted on PTB tokens, as the metrics see them: "A dog runs." and "a dog runs" are one caption, and a
    training caption written "A dog runs!" is the same caption too."""
    refs = {"1": ["a dog"], "2": ["a dog"], "3": ["a cat"], "4": ["a cat"]}
    cands = {"1": "A dog runs.", "2": "a dog runs", "3": "a cat sleeps on a mat", "4": "cat"}
    # Tokens: [a dog runs] x2, [a cat sleeps on a mat], [cat]: 13 words, distinct a dog runs cat sleeps on mat = 7.
    # Bigrams (within captions): 2 + 2 + 5 + 0 = 9; distinct a-dog dog-runs a-cat cat-sleeps sleeps-on on-a a-mat = 7.
    scores = evaluate_captions(refs, cands, metrics="BLEU", train_captions=["A dog runs!", "a cat"])
    assert scores["distinct_1"] == pytest.approx(7 / 13)
    assert scores["distinct_2"] == pytest.approx(7 / 9)
    assert (scores["vocab_size"], scores["unique_captions"]) == (7, 3)
    assert scores["unique_share"] == pytest.approx(3 / 4)
    assert scores["copied_from_train"] == pytest.approx(2 / 4)
    # Lengths 1, 3, 3, 6: numpy's linear percentiles at positions 0.3, 1.5 and 2.7 of the sorted lengths.
    assert scores["length_mean"] == pytest.approx(13 / 4)
    assert scores["length_std"] == pytest.approx(math.sqrt((2.25**2 + 0.25**2 * 2 + 2.75**2) / 4))
    assert (scores["length_min"], scores["length_max"]) == (1, 6)
    assert scores["length_p10"] == pytest.approx(1 + 0.3 * 2)
    assert scores["length_p50"] == pytest.approx(3.0)
    assert scores["length_p90"] == pytest.approx(3 + 0.7 * 3)
