import pytest
from transformers import AutoTokenizer

from captionkit.errors import ModelLoadError
from captionkit.text import CaptionTokenizer, train_bpe_tokenizer

CAPTIONS = [
    "A red circle left of a blue square",
    "a small green triangle above a large yellow circle",
    "two dogs play in the snow",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CAPTIONS, vocab_size=320, min_frequency=1)


def test_special_ids_are_distinct_and_first(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.vocab_size <= 320


@pytest.mark.parametrize("text", ["", "a", "a red circle left of a blue square", "café naïve 😀 — “quotes”"])
def test_encode_decode_identity_after_lowercasing(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text.lower()


def test_frequent_words_become_single_tokens(tokenizer):
    # Each frequent word is one token, the same at the start of a caption as inside it (add_prefix_space).
    assert len(tokenizer.encode("circle")) == 1
    assert tokenizer.encode("circle") == tokenizer.encode("a circle")[1:]


def test_decode_drops_special_tokens(tokenizer):
    ids = [
        tokenizer.bos_token_id,
        *tokenizer.encode("a red circle"),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    ]
    assert tokenizer.decode(ids) == "a red circle"


def test_save_load_round_trip_and_plain_transformers(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = CaptionTokenizer.load(tmp_path)
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)
    text = "a small green triangle above a large yellow circle"
    assert loaded.encode(text) == tokenizer.encode(text)
    plain = AutoTokenizer.from_pretrained(str(tmp_path))
    assert plain.encode(text, add_special_tokens=False) == tokenizer.encode(text)


def test_explicit_ids_win(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    loaded = CaptionTokenizer.load(tmp_path, bos_token_id=2, eos_token_id=2, pad_token_id=2)
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (2, 2, 2)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError) as caught:
        CaptionTokenizer.load(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert "\n" not in str(caught.value)
