"""BLIP fine-tuned with a conditional prompt (recipe key ``model.prompt``, "a picture of" in BLIP's own fine-tune):
the prompt follows the start token of every caption and stays out of the loss, as transformers' BLIP fine-tuning
labels it -100; decoding feeds it, and the model keeps it when saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BlipForConditionalGeneration

from _data import real_photos
from _helpers import tiny_model
from _hub_models import hub_layout
from captionkit import Captioner
from captionkit.errors import ConfigError, InputError
from captionkit.training.loss import token_nll

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTOS = real_photos(3)
PROMPT = "a picture of"


def test_the_loss_leaves_out_the_prompt() -> None:
    torch.manual_seed(0)
    model = tiny_model("blip", bos_token_id=1, eos_token_id=2, pad_token_id=0).eval()
    prompt = (5, 6, 7)
    model.set_prompt(prompt)
    # On the model's device for every call, and not a weight of the checkpoint.
    assert model.prompt_tensor.tolist() == list(prompt) and "prompt_tensor" not in model.state_dict()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[1, 10, 11, 12, 2], [1, 13, 14, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        total, count = token_nll(model(pixels, ids, mask), ids, mask)
        # By hand: the decoder reads [bos, prompt, caption, eos]; only the caption tokens and eos are targets.
        full = torch.cat([ids[:, :1], torch.tensor([prompt, prompt]), ids[:, 1:]], dim=1)
        full_mask = torch.cat([mask[:, :1], torch.ones(2, 3, dtype=torch.long), mask[:, 1:]], dim=1)
        memory = model.hf.vision_model(pixel_values=pixels).last_hidden_state
        logits = model.hf.text_decoder(
            input_ids=full, attention_mask=full_mask, encoder_hidden_states=memory, use_cache=False
        ).logits
    log_probs = F.log_softmax(logits.float(), dim=-1)
    expected, targets = torch.tensor(0.0), 0
    for row in range(2):
        for position in range(len(prompt) + 1, full.shape[1]):  # targets after [DEC] and the prompt
            if full_mask[row, position]:
                expected -= log_probs[row, position - 1, full[row, position]]
                targets += 1
    assert (count, targets) == (7, 7)  # 3 + eos, 2 + eos: no prompt token, no padding
    assert total == pytest.approx(float(expected), abs=1e-5)
    # The prompt is context, not target: the same captions without it score otherwise.
    model.set_prompt(())
    with torch.no_grad():
        assert token_nll(model(pixels, ids, mask), ids, mask)[0] != pytest.approx(total, abs=1e-3)


def test_a_prompted_model_captions_after_its_prompt_and_keeps_it(tmp_path: Path) -> None:
    hub_layout("blip", tmp_path / "hub")
    captioner = Captioner.from_pretrained(tmp_path / "hub", device="cpu")
    prompt_ids = tuple(captioner.tokenizer.encode(PROMPT))
    # Before: the same weights continue the prompt when the caller passes it.
    continued = captioner.caption(PHOTOS, prompt=PROMPT, num_beams=2, max_new_tokens=6)
    captioner.model.set_prompt(prompt_ids)
    captioner.save_pretrained(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["captionkit_prompt_ids"] == list(prompt_ids)
    reloaded = Captioner.from_pretrained(tmp_path / "run", device="cpu")
    assert reloaded.model.prompt_ids == prompt_ids
    assert reloaded.model.max_positions == captioner.model.max_positions == 64 - len(prompt_ids)
    own = reloaded.caption(PHOTOS, num_beams=2, max_new_tokens=6)
    assert [r.captions[0].token_ids for r in own] == [r.captions[0].token_ids for r in continued]
    # Plain transformers still loads the run (the prompt is one more config.json key).
    plain = BlipForConditionalGeneration.from_pretrained(tmp_path / "run")
    assert plain.config.captionkit_prompt_ids == list(prompt_ids)


def test_other_families_take_no_training_prompt() -> None:
    with pytest.raises(ConfigError) as raised:
        tiny_model("vit-gpt2").set_prompt((5,))
    assert str(raised.value) == "model.prompt: the vit-gpt2 family takes no training prompt (blip does)"


def test_a_prompt_too_long_for_the_model_is_blamed_on_the_prompt(tmp_path: Path) -> None:
    """A prompt that fills the model's positions was refused as "max_new_tokens: must be at most -39"."""
    hub_layout("blip", tmp_path / "hub")
    captioner = Captioner.from_pretrained(tmp_path / "hub", device="cpu")
    limit = captioner.model.max_positions
    with pytest.raises(InputError) as raised:
        captioner.caption(PHOTOS[0], prompt=" ".join(["a"] * (limit + 36)), max_new_tokens=3)
    assert (
        str(raised.value) == f"prompt: is {limit + 36} tokens; this model takes at most {limit - 1}, leaving room "
        "for a caption"
    )
    with pytest.raises(InputError) as raised:
        captioner.caption(PHOTOS[0], prompt=" ".join(["a"] * (limit - 6)), max_new_tokens=20)
    assert (
        str(raised.value)
        == f"max_new_tokens: must be at most 6 for this model after a {limit - 6}-token prompt, got 20"
    )
