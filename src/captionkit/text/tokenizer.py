"""Caption tokenizers: a pretrained checkpoint's tokenizer, or a byte-level BPE or word vocabulary trained on captions.

Either way the result is a ``transformers`` fast tokenizer saved as ``tokenizer.json`` (+ ``tokenizer_config.json``),
so a checkpoint directory loads with ``AutoTokenizer.from_pretrained(dir)``. :class:`CaptionTokenizer` adds the three
ids captionkit needs (bos = the decoder start token, eos, pad); GPT-2 checkpoints use one id for all three.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from captionkit.errors import ModelLoadError, first_line
from captionkit.hub import resolve_model_source

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"


@dataclass
class CaptionTokenizer:
    """A fast tokenizer plus the special ids a captioner needs."""

    hf: PreTrainedTokenizerFast
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, caption: str) -> list[int]:
        """Token ids of ``caption``, without special tokens."""
        return list(self.hf.encode(caption, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens are dropped and surrounding spaces stripped."""
        return self.hf.decode(list(ids), skip_special_tokens=True).strip()

    def save(self, directory: str | Path) -> None:
        self.hf.save_pretrained(str(directory))

    @classmethod
    def load(
        cls,
        name_or_dir: str | Path,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> CaptionTokenizer:
        """Load tokenizer files from a directory or hub id; ids not given come from its special tokens."""
        directory = resolve_model_source(name_or_dir)  # a hub id's snapshot, failing in one line when offline
        with tokenizer_files(name_or_dir):
            hf = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
        if not isinstance(hf, PreTrainedTokenizerFast):
            raise ModelLoadError(name_or_dir, "only fast (tokenizer.json) tokenizers are supported")
        bos = _pick(bos_token_id, hf.bos_token_id, hf.eos_token_id)
        eos = _pick(eos_token_id, hf.eos_token_id)
        pad = _pick(pad_token_id, hf.pad_token_id, eos)
        if bos is None or eos is None or pad is None:
            raise ModelLoadError(name_or_dir, "tokenizer defines no bos/eos token and the model config gives none")
        return cls(hf, bos, eos, pad)


@contextmanager
def tokenizer_files(name_or_dir: str | Path) -> Iterator[None]:
    """Reading the tokenizer files of ``name_or_dir``: what fails becomes one :class:`ModelLoadError` line naming it.
    The Rust tokenizers library raises a bare ``Exception`` for a file it cannot parse ("Error while initializing
    BPE: expected value at line 1 column 1", a damaged vocab.json or merges.txt); another exception type is a bug."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise ModelLoadError(name_or_dir, f"cannot load a tokenizer ({first_line(error)})") from None
    except Exception as error:
        if type(error) is not Exception:
            raise
        raise ModelLoadError(name_or_dir, f"cannot load a tokenizer ({first_line(error)})") from None


def _pick(*candidates: int | None) -> int | None:
    return next((candidate for candidate in candidates if candidate is not None), None)


def train_bpe_tokenizer(
    captions: Iterable[str], vocab_size: int = 4000, lowercase: bool = True, min_frequency: int = 2
) -> CaptionTokenizer:
    """Train a byte-level BPE (GPT-2 style) on ``captions``; specials ``<pad>``, ``<bos>``, ``<eos>`` come first.

    Every word gets a leading-space marker (``add_prefix_space``), so a word has the same tokens at the start of a
    caption as in its middle: that matters for small vocabularies trained on short captions.
    """
    tokenizer = Tokenizer(models.BPE())
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(captions, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    return CaptionTokenizer(hf, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)


def train_word_tokenizer(captions: Iterable[str], vocab_size: int = 10000, lowercase: bool = True) -> CaptionTokenizer:
    """A word-level vocabulary: the ``vocab_size`` most frequent words plus ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``.

    Words are split on whitespace and punctuation (punctuation marks are words of their own); any other word maps
    to ``<unk>``. Saved as a ``tokenizer.json`` (``WordLevel`` model) that :meth:`CaptionTokenizer.load` reads back.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be at least 1, got {vocab_size}")
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = [PAD, BOS, EOS, UNK]
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size + len(specials), min_frequency=1, special_tokens=specials, show_progress=False
    )
    tokenizer.train_from_iterator(captions, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)
    return CaptionTokenizer(hf, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
