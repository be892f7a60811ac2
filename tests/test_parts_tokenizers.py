"""Hub checkpoints whose tokenizer files are missing, damaged or another model's: one clear line naming the directory,
never empty captions from a tokenizer transformers made up, never a traceback from the tokenizers library; other
tokenizer files with tokens added grow the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _hub_models import hub_layout
from _hub_parts import save_gpt2, save_vit, save_vit_gpt2_t4
from captionkit import Captioner
from captionkit.errors import ModelLoadError
from captionkit.parts import CaptionerParts

NO_TOKENIZER = "no tokenizer files (tokenizer.json, or vocab.json + merges.txt): copy the base model's here"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def nlpconnect(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ViT-GPT2 as nlpconnect/vit-gpt2-image-captioning stores it (vocab.json + merges.txt)."""
    root = tmp_path_factory.mktemp("nlpconnect")
    return save_vit_gpt2_t4(root / "run", save_vit(root / "vit"), save_gpt2(root / "gpt2"))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("family", ["blip", "git"])
def test_a_blip_or_git_checkpoint_without_tokenizer_files_is_refused(family: str, legacy: bool, tmp_path: Path) -> None:
    """transformers builds a BERT tokenizer of the five special tokens alone for such a directory: every caption
    came out empty, exit 0."""
    hub_layout(family, tmp_path, legacy)
    for name in TOKENIZER_FILES:
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError) as raised:
        Captioner.from_pretrained(tmp_path, device="cpu")
    assert str(raised.value) == f"{tmp_path}: {NO_TOKENIZER}"


@pytest.mark.parametrize("named", [True, False], ids=["tokenizer-class", "no-tokenizer-class"])
@pytest.mark.parametrize("damaged", ["vocab.json", "merges.txt"])
def test_damaged_gpt2_tokenizer_files_are_one_line(nlpconnect: Path, damaged: str, named: bool, tmp_path: Path) -> None:
    """A cut or mis-encoded vocab.json / merges.txt made the tokenizers library raise a bare Exception: a traceback."""
    run = Path(shutil.copytree(nlpconnect, tmp_path / "run"))
    (run / damaged).write_bytes(b"\xff\xfe{")
    if not named:  # read through GPT2TokenizerFast, not AutoTokenizer
        settings = json.loads((run / "tokenizer_config.json").read_text(encoding="utf-8"))
        del settings["tokenizer_class"]
        (run / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    with pytest.raises(ModelLoadError) as raised:
        Captioner.from_pretrained(run, device="cpu")
    reason = "Error while initializing BPE: stream did not contain valid UTF-8"
    assert str(raised.value) == f"{run}: cannot load a tokenizer ({reason})"


def test_other_tokenizer_files_with_added_tokens_grow_the_model(nlpconnect: Path, tmp_path: Path) -> None:
    """``tokenizer.pretrained`` with tokens added (``add_tokens``) beside ``model.pretrained``: a caption holding one
    failed training with "index out of range" (a traceback), the model's vocabulary being the old one."""
    from transformers import AutoTokenizer

    words = AutoTokenizer.from_pretrained(save_gpt2(tmp_path / "gpt2", "t5"))
    words.add_tokens(["woman", "people"])
    words.save_pretrained(tmp_path / "tokenizer")
    parts = CaptionerParts.load(nlpconnect, tokenizer=tmp_path / "tokenizer")
    assert parts.model.vocab_size == parts.tokenizer.vocab_size == len(words)
    ids = parts.tokenizer.encode("a woman and people")
    assert max(ids) == len(words) - 1
    with torch.no_grad():
        logits = parts.model(torch.zeros(1, 3, 32, 32), torch.tensor([[parts.model.bos_token_id, *ids]]))
    assert logits.shape == (1, len(ids) + 1, len(words))


def test_other_tokenizer_files_with_fewer_tokens_are_refused(nlpconnect: Path, tmp_path: Path) -> None:
    """A tokenizer smaller than the model's vocabulary (BLIP's for a GPT-2 model) cannot write the ids the model
    generates: captions came out empty."""
    hub_layout("blip", tmp_path / "blip")
    with pytest.raises(ModelLoadError) as raised:
        CaptionerParts.load(nlpconnect, tokenizer=tmp_path / "blip")
    reason = f"has 25 tokens, fewer than the 320 of {nlpconnect}'s vocabulary: not this model's tokenizer"
    assert str(raised.value) == f"{tmp_path / 'blip'}: {reason}"


def test_a_damaged_tokenizer_given_on_its_own_is_one_line(tmp_path: Path) -> None:
    """`--set tokenizer.pretrained=DIR` beside parts reads DIR through CaptionTokenizer.load, not the checkpoint
    loader: a damaged vocab.json was the tokenizers library's bare Exception there too, a traceback."""
    from captionkit.text import CaptionTokenizer

    tokenizer = save_gpt2(tmp_path / "gpt2", "t4")
    (tokenizer / "vocab.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ModelLoadError) as raised:
        CaptionTokenizer.load(tokenizer)
    reason = "Error while initializing BPE: stream did not contain valid UTF-8"
    assert str(raised.value) == f"{tokenizer}: cannot load a tokenizer ({reason})"
