"""Caption tokenizers."""

from captionkit.text.tokenizer import CaptionTokenizer, train_bpe_tokenizer, train_word_tokenizer

__all__ = ["CaptionTokenizer", "train_bpe_tokenizer", "train_word_tokenizer"]
