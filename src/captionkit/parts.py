"""A captioner's three parts (model, tokenizer, preprocessing) loaded from one checkpoint and saved into another.

The layer below :mod:`captionkit.api`: the exports (int8, ONNX) read and write checkpoints through it, so that
they need not import the API that loads their results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captionkit.files import honour_umask
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel
from captionkit.models.registry import load_model
from captionkit.text import CaptionTokenizer


@dataclass
class CaptionerParts:
    """What a checkpoint directory holds, and the directory it was read from."""

    model: CaptionModel
    tokenizer: CaptionTokenizer
    preprocessing: Preprocessing
    source: Path

    @classmethod
    def load(cls, name_or_dir: str | Path) -> CaptionerParts:
        """The parts of a captionkit checkpoint directory, or of a hub id / directory in the Hugging Face layout."""
        source = resolve_model_source(name_or_dir)
        model = load_model(source)
        tokenizer = CaptionTokenizer.load(source, model.bos_token_id, model.eos_token_id, model.pad_token_id)
        return cls(model, tokenizer, Preprocessing.load(source), source)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save(directory)
        self.preprocessing.save(directory)
        honour_umask(directory)
