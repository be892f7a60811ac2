import itertools
import math

import pytest
import torch

from captionkit.training.loss import IGNORE_INDEX, caption_loss, shifted_labels, token_nll
from captionkit.training.schedule import lr_at


def test_labels_shift_and_mask_padding_by_mask_not_id():
    # bos = eos = pad = 7, as in GPT-2 checkpoints: only the mask tells padding apart.
    ids = torch.tensor([[7, 3, 4, 7, 7], [7, 5, 7, 7, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    assert shifted_labels(ids, mask).tolist() == [[3, 4, 7, IGNORE_INDEX], [5, 7, IGNORE_INDEX, IGNORE_INDEX]]


def test_loss_equals_mean_nll_over_real_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    ids = torch.tensor([[1, 3, 4, 2, 0], [1, 5, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    log_probs = logits.log_softmax(-1)
    targets = [(0, 0, 3), (0, 1, 4), (0, 2, 2), (1, 0, 5), (1, 1, 2)]
    expected = -sum(log_probs[b, t, v] for b, t, v in targets) / len(targets)
    assert caption_loss(logits, ids, mask).item() == pytest.approx(expected.item(), abs=1e-6)
    total, count = token_nll(logits, ids, mask)
    assert count == 5
    assert total / count == pytest.approx(expected.item(), abs=1e-5)


def test_schedule_warmup_then_cosine_to_floor():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(99, 1.0, 10, 100, min_lr_ratio=0.1) == pytest.approx(0.1)
    middle = lr_at(10 + 89 // 2, 1.0, 10, 100, min_lr_ratio=0.0)
    assert middle == pytest.approx(0.5 * (1 + math.cos(math.pi * (44 / 89))))
    values = [lr_at(s, 1.0, 10, 100) for s in range(10, 100)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_schedule_without_warmup():
    assert lr_at(0, 2.0, 0, 10) == pytest.approx(2.0)
