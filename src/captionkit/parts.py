"""A captioner's three parts (model, tokenizer, preprocessing) read from one checkpoint and saved into another.

The plain checkpoint layer: :mod:`captionkit.loading` adds the export markers (int8, ONNX) on top of it, and the
exports read their source checkpoints through it, so that they need not import the loader that loads their results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captionkit.errors import ModelLoadError
from captionkit.files import honour_umask
from captionkit.hub import resolve_model_source
from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel
from captionkit.models.registry import load_model
from captionkit.quiet import no_transformers_progress_bars
from captionkit.text import CaptionTokenizer

#: The files that mark an export directory: ONNX (``captionkit export onnx``) and int8 (``captionkit export int8``).
ONNX_CONFIG = "onnx_config.json"
QUANTIZATION_FILE = "quantization.json"


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
    def load(cls, name_or_dir: str | Path, tokenizer: str | Path | None = None) -> CaptionerParts:
        """The parts of a captionkit checkpoint directory, or of a hub id / directory in the Hugging Face layout;
        ``tokenizer`` names other tokenizer files to read instead of the model's own (its special ids are kept)."""
        source = resolve_model_source(name_or_dir)
        _refuse_export(source, name_or_dir)
        model = load_model(source)
        return cls(model, load_tokenizer(model, tokenizer or source), Preprocessing.load(source), source)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with no_transformers_progress_bars():
            self.model.save_pretrained(directory)
        self.tokenizer.save(directory)
        self.preprocessing.save(directory)
        honour_umask(directory)


def _refuse_export(directory: Path, name: str | Path) -> None:
    """An export is for inference only (:mod:`captionkit.loading` loads it): training from it, or exporting it
    again, needs the checkpoint it was exported from."""
    for marker, kind in ((ONNX_CONFIG, "an ONNX export"), (QUANTIZATION_FILE, "an int8 export")):
        if (directory / marker).is_file():
            raise ModelLoadError(
                name, f"is {kind} ({marker}), for captioning only: use the checkpoint it was exported from"
            )


def load_tokenizer(model: CaptionModel, source: str | Path) -> CaptionTokenizer:
    """The tokenizer files in ``source``, with ``model``'s special token ids."""
    return CaptionTokenizer.load(source, model.bos_token_id, model.eos_token_id, model.pad_token_id)
