"""Hypotheses become captions in one place (decoding.to_captions), the same for the API and the batch job."""

from __future__ import annotations

import json

import pytest

from _data import real_photos
from _helpers import CAPTIONS, run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.decoding import Caption, Hypothesis, to_captions
from captionkit.images import load_image
from captionkit.models.registry import train_tokenizer


def test_to_captions_decodes_each_hypothesis_in_place():
    tokenizer = train_tokenizer("vit-gpt2", list(CAPTIONS) * 10, 300)
    dog, cat = tokenizer.encode("a dog runs on the grass"), tokenizer.encode("a cat sits")
    hypotheses = [[Hypothesis(dog, -0.5, -3.0, True), Hypothesis(cat, -1.25, -3.75, False)], []]
    assert to_captions(hypotheses, tokenizer) == [
        [Caption("a dog runs on the grass", -0.5, dog), Caption("a cat sits", -1.25, cat)],
        [],
    ]


@pytest.mark.usefixtures("single_thread")
def test_the_batch_job_writes_the_api_captions(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    photos = real_photos(3)
    code, out, err = run_cli(["caption", *photos, "--model", model, "--beams", "2", "--n-best", "2"], capsys)
    assert code == 0, err
    captioner = Captioner.from_pretrained(model, device="cpu")
    # The job's workers decode JPEGs in draft mode (these photos at 1/8 for this 32 px model): the same here.
    drafted = [load_image(photo, draft=captioner.preprocessing.draft_size) for photo in photos]
    assert [image.size for image in drafted] == [(80, 54), (53, 80), (42, 63)]
    expected = captioner.caption(drafted, num_beams=2, num_return_sequences=2)
    records = [json.loads(line) for line in out.splitlines()]
    assert [[(c["caption"], c["score"]) for c in r["captions"]] for r in records] == [
        [(c.caption, pytest.approx(c.score, abs=1e-5)) for c in result.captions] for result in expected
    ]


def test_caption_is_the_one_word_and_text_a_deprecated_alias():
    """Issue 18.4: the Python object names the text ``caption``, as every JSON output does."""
    caption = Caption("a dog runs", -0.5, [5, 6])
    assert caption.caption == "a dog runs"
    with pytest.warns(DeprecationWarning, match=r"Caption\.text is deprecated; use Caption\.caption"):
        assert caption.text == "a dog runs"


def test_one_image_of_any_source_kind_or_any_iterable_of_them_is_captioned(tmp_path):
    """Every ImageSource is one image (bytearray, memoryview and streams were iterated, or had no len()); a
    generator of images is a list; anything else is a TypeError saying what caption() takes."""
    captioner = Captioner.from_pretrained(save_tiny_model(tmp_path / "model"), device="cpu")
    photo = real_photos(1)[0]
    data = photo.read_bytes()
    expected = captioner.caption(photo, num_beams=2)[0].captions
    with photo.open("rb") as stream:
        for source in (bytearray(data), memoryview(data), stream):
            (result,) = captioner.caption(source, num_beams=2)
            assert (result.image, result.captions) == ("<image>", expected)
    from_generator = captioner.caption((path for path in [photo, str(photo)]), num_beams=2)
    assert [(r.image, r.captions) for r in from_generator] == [(str(photo), expected)] * 2
    with pytest.raises(TypeError, match=r"^cannot caption a int: give a path, bytes, a binary stream, a PIL image"):
        captioner.caption(5)
