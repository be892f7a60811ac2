"""A captioner's three parts (model, tokenizer, preprocessing) read from one checkpoint and saved into another.

The plain checkpoint layer: :mod:`captionkit.loading` adds the export markers (int8, ONNX) on top of it, and the
exports read their source checkpoints through it, so that they need not import the loader that loads their results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2TokenizerFast

from captionkit.errors import ModelLoadError
from captionkit.files import honour_umask
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel
from captionkit.models.registry import load_model
from captionkit.quiet import no_transformers_progress_bars
from captionkit.text import CaptionTokenizer
from captionkit.text.tokenizer import tokenizer_files

#: The files that mark an export directory: ONNX (``captionkit export onnx``) and int8 (``captionkit export int8``).
ONNX_CONFIG = "onnx_config.json"
QUANTIZATION_FILE = "quantization.json"
# Each export kind's marker file, which decides how a directory loads (ONNX before int8).
EXPORT_MARKERS = {ONNX_CONFIG: "an ONNX export", QUANTIZATION_FILE: "an int8 export"}
# Families whose decoder is GPT-2, and GPT-2's tokenizer files as transformers 4 saved them.
GPT2_DECODER_FAMILIES = ("vit-gpt2", "prefix-gpt2")
GPT2_BPE_FILES = ("vocab.json", "merges.txt")
# Files one of transformers' tokenizers reads: a directory with none of them has no tokenizer at all.
TOKENIZER_FILE_PATTERNS = ("tokenizer.json", "vocab.*", "merges.txt", "*.model", "*.spm")
NO_TOKENIZER = "no tokenizer files (tokenizer.json, or vocab.json + merges.txt): copy the base model's here"


@dataclass
class CaptionerParts:
    """What a model directory holds, and the local directory it was read from (a hub id's snapshot)."""

    model: CaptionModel
    tokenizer: CaptionTokenizer
    preprocessing: Preprocessing
    source: Path
    # An int8 or ONNX export: its kernels run on the CPU only.
    cpu_only: bool = False
    is_onnx: bool = False

    @classmethod
    def load(
        cls, name_or_dir: str | Path, tokenizer: str | Path | None = None, dtype: torch.dtype | None = None
    ) -> CaptionerParts:
        """The parts of a captionkit checkpoint directory, or of a hub id / directory in the Hugging Face layout;
        ``tokenizer`` names other tokenizer files to read instead of the model's own (its special ids are kept);
        ``dtype`` (None: fp32) is the one the model's weights are built and read in."""
        source = resolve_model_source(name_or_dir)
        refuse_export(source, name_or_dir)
        # None is fp32 here, not a Hugging Face checkpoint's stored dtype: an fp16 upload read as stored failed the
        # first training step under autocast ("Unexpected floating ScalarType in at::autocast::prioritize").
        model = load_model(source, dtype=dtype or torch.float32)
        words = load_tokenizer(model, tokenizer or source)
        if tokenizer is not None:
            fit_vocabulary(model, words, tokenizer, name_or_dir)
        return cls(model, words, Preprocessing.load(source), source)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with no_transformers_progress_bars():
            self.model.save_pretrained(directory)
        self.tokenizer.save(directory)
        self.preprocessing.save(directory)
        honour_umask(directory)


def fit_vocabulary(model: CaptionModel, tokenizer: CaptionTokenizer, name: str | Path, model_name: str | Path) -> None:
    """Other tokenizer files than the model's own: tokens it adds get new rows (as for parts, or style tokens), where
    a caption holding one failed training with "index out of range"; fewer tokens than the model's vocabulary mean
    ids the model generates that it cannot write, so they are not this model's tokenizer."""
    if tokenizer.vocab_size > model.vocab_size:
        model.resize_vocabulary(tokenizer.vocab_size)
    elif tokenizer.vocab_size < model.vocab_size:
        reason = f"has {tokenizer.vocab_size} tokens, fewer than the {model.vocab_size} of {model_name}'s vocabulary"
        raise ModelLoadError(name, f"{reason}: not this model's tokenizer")


def refuse_export(directory: Path, name: str | Path) -> None:
    """An export is for inference only (:mod:`captionkit.loading` loads it): training from it, or exporting it
    again, needs the checkpoint it was exported from."""
    for marker, kind in EXPORT_MARKERS.items():
        if (directory / marker).is_file():
            raise ModelLoadError(
                name, f"is {kind} ({marker}), for captioning only: use the checkpoint it was exported from"
            )


def load_tokenizer(model: CaptionModel, source: str | Path) -> CaptionTokenizer:
    """The tokenizer files in ``source``, with ``model``'s special token ids."""
    ids = (model.bos_token_id, model.eos_token_id, model.pad_token_id)
    directory = resolve_model_source(source)
    if not any(next(directory.glob(pattern), None) for pattern in TOKENIZER_FILE_PATTERNS):
        # transformers' own words here ("Couldn't instantiate the backend tokenizer from one of: ") name nothing,
        # and for a BERT model_type (BLIP, GIT) it builds a tokenizer of the special tokens alone, whose captions
        # would all be empty.
        raise ModelLoadError(source, NO_TOKENIZER)
    if model.family in GPT2_DECODER_FAMILIES and _unnamed_bpe_pair(directory):
        with tokenizer_files(source):
            return CaptionTokenizer(GPT2TokenizerFast.from_pretrained(str(directory)), *ids)
    try:
        return CaptionTokenizer.load(directory, *ids)
    except ModelLoadError as error:  # named as the caller named it (a hub id, not its snapshot's directory)
        raise ModelLoadError(source, error.reason) from None


def _unnamed_bpe_pair(directory: Path) -> bool:
    """Whether ``directory`` holds only GPT-2's BPE files (vocab.json + merges.txt) and no file names their class.

    Fine-tunes saved by transformers 4 may hold just these (no tokenizer.json, a tokenizer_config.json without
    ``tokenizer_class``, or none). AutoTokenizer then guesses the class from config.json's model_type, and a
    VisionEncoderDecoder's implies none: the decoder's model_type (GPT-2) does.
    """
    if (directory / "tokenizer.json").is_file() or not all((directory / n).is_file() for n in GPT2_BPE_FILES):
        return False
    settings = directory / "tokenizer_config.json"
    if not settings.is_file():
        return True
    try:
        named = json.loads(settings.read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False  # CaptionTokenizer.load reports an unreadable file
    return named is None
