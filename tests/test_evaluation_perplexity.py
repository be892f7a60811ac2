"""``evaluate``'s perplexity against its definition, computed here one caption at a time through the step protocol:
exp of the mean negative log-likelihood over every caption token and the end token, the start token and padding
excluded, each caption teacher forced from its start token and cut to ``max_length`` tokens."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from _data import real_photos
from _helpers import save_tiny_model
from captionkit.api import Captioner
from captionkit.data.records import CaptionRecord
from captionkit.model_evaluation import dataset_perplexity

IMAGES = real_photos(2)
# Lengths differ (so batches hold padding), and the last is longer than max_length below.
CAPTIONS = ["a dog", "a cat sits on a red couch", "a dog runs on the grass " * 4]
MAX_LENGTH = 12


@torch.no_grad()
def nll_by_definition(captioner: Captioner, record: CaptionRecord) -> tuple[float, int]:
    """(summed NLL, tokens) of one caption: -log p(token | image, the tokens before it), fed step by step."""
    tokenizer, model = captioner.tokenizer, captioner.model
    ids = [tokenizer.bos_token_id, *tokenizer.encode(record.caption)[: MAX_LENGTH - 2], tokenizer.eos_token_id]
    pixels = torch.from_numpy(captioner.preprocessing(captioner.load_images([record.image_path])))
    state = model.init_state(model.encode(pixels))
    total = 0.0
    for previous, target in pairwise(ids):
        log_probs, state = model.step(torch.tensor([previous]), state)
        total -= float(log_probs.log_softmax(-1)[0, target])
    return total, len(ids) - 1  # every token after the start token, the end token included


def test_perplexity_is_exp_of_the_mean_nll_over_caption_and_end_tokens(tmp_path, single_thread):
    captioner = Captioner.from_pretrained(save_tiny_model(tmp_path / "tiny"), device="cpu")
    records = [CaptionRecord(image, caption, image_id=image.stem) for image in IMAGES for caption in CAPTIONS]
    parts = [nll_by_definition(captioner, record) for record in records]
    assert parts[2][1] == MAX_LENGTH - 1  # the long caption was cut, its end token kept
    expected = math.exp(sum(nll for nll, _ in parts) / sum(count for _, count in parts))
    for batch_size in (1, 4):  # padding never counts
        found = dataset_perplexity(captioner, records, batch_size=batch_size, max_length=MAX_LENGTH)
        assert found == pytest.approx(expected, rel=1e-5)
