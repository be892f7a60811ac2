"""Style tokens: added to a tokenizer for training with styles; requests for styles a model lacks are clear errors."""

from __future__ import annotations

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
