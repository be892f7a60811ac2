"""Style tokens: added to a tokenizer for training with styles; requests for styles a model lacks are clear errors."""

from __future__ import annotations

import json

import pytest

from captionkit.errors import InputError
from captionkit.text import CaptionTokenizer, train_bpe_tokenizer
from captionkit.text.styles import add_style_tokens, start_token_id, style_token_ids

CAPTIONS = ["a red circle", "a lovely red circle", "an ugly blue square"] * 3


def test_style_tokens_are_added_once_and_survive_save_and_load(tmp_path):
    tokenizer = train_bpe_tokenizer(CAPTIONS, vocab_size=300, min_frequency=1)
    size = tokenizer.vocab_size
    assert style_token_ids(tokenizer) == {}
    ids = add_style_tokens(tokenizer)
    assert set(ids) == {"positive", "negative"} and tokenizer.vocab_size == size + 2
    assert add_style_tokens(tokenizer) == ids and tokenizer.vocab_size == size + 2  # idempotent
    # A style token is one token, and decoding drops it like the other special tokens.
    assert tokenizer.hf.convert_tokens_to_ids("<positive>") == ids["positive"]
    assert tokenizer.decode([ids["positive"], *tokenizer.encode("a red circle")]) == "a red circle"
    tokenizer.save(tmp_path)
    loaded = CaptionTokenizer.load(tmp_path)
    assert style_token_ids(loaded) == ids
    assert start_token_id(loaded, "negative") == ids["negative"]
    assert start_token_id(loaded, "neutral") == start_token_id(loaded, None) == loaded.bos_token_id


def test_style_requests_a_model_cannot_serve_are_one_line_errors():
    plain = train_bpe_tokenizer(CAPTIONS, vocab_size=300, min_frequency=1)
    with pytest.raises(InputError, match="trained without styles: it cannot write positive captions"):
        start_token_id(plain, "positive", "hub/model")
    with pytest.raises(InputError, match="unknown style 'happy'"):
        start_token_id(plain, "happy")
    only_positive = train_bpe_tokenizer(CAPTIONS, vocab_size=300, min_frequency=1)
    add_style_tokens(only_positive, ["neutral", "positive"])
    with pytest.raises(InputError, match="knows the styles neutral, positive, not 'negative'"):
        start_token_id(only_positive, "negative")
    with pytest.raises(InputError, match="unknown style 'sarcastic'"):
        add_style_tokens(only_positive, ["sarcastic"])


def test_style_names_are_read_in_any_case_as_the_data_readers_read_them(tmp_path):
    from captionkit.decoding.options import decoding_request

    tokenizer = train_bpe_tokenizer(CAPTIONS, vocab_size=300, min_frequency=1)
    ids = add_style_tokens(tokenizer)
    assert start_token_id(tokenizer, " Negative ") == start_token_id(tokenizer, "NEGATIVE") == ids["negative"]
    assert start_token_id(tokenizer, "Neutral") == tokenizer.bos_token_id
    assert decoding_request(style="POSITIVE").style == "positive"
    assert decoding_request(style=" Neutral ").style is None  # neutral: the model's own start, as when not asked
    with pytest.raises(InputError, match=r"^--style: unknown style 'Happy' \(known: neutral, positive, negative\)$"):
        decoding_request(naming=lambda name: f"--{name}", style="Happy")
    plain = train_bpe_tokenizer(CAPTIONS, vocab_size=300, min_frequency=1)
    with pytest.raises(InputError, match="hub/model was trained without styles: it cannot write positive captions"):
        start_token_id(plain, "Positive", "hub/model")


def test_both_jsonl_readers_read_a_style_in_any_case(tmp_path):
    from captionkit.data import load_records, read_jsonl

    path = tmp_path / "captions.jsonl"
    rows = [("Positive", "a lovely red circle"), (" NEGATIVE ", "an ugly blue square"), (None, "a red circle")]
    path.write_text("".join(json.dumps({"image": "a.png", "caption": c, "style": s}) + "\n" for s, c in rows))
    expected = ["positive", "negative", "neutral"]
    assert [r.style for r in read_jsonl(path)] == [r.style for r in load_records(path)] == expected
    path.write_text(json.dumps({"image": "a.png", "caption": "x", "style": "pos"}) + "\n")
    with pytest.raises(InputError, match="unknown style 'pos' \\(expected one of neutral, positive, negative\\)"):
        read_jsonl(path)
