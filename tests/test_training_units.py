import itertools
import math

import pytest
import torch

from captionkit.training.loss import IGNORE_INDEX, caption_loss_sum, shifted_labels, token_nll
from captionkit.training.sampling import SampleStream
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
    loss_sum, count = caption_loss_sum(logits, ids, mask)
    assert count == 5 and loss_sum.item() / count == pytest.approx(expected.item(), abs=1e-6)
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


def test_linear_and_constant_schedules():
    assert lr_at(10, 1.0, 10, 101, 0.0, kind="linear") == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 101, 0.0, kind="linear") == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 101, 0.2, kind="linear") == pytest.approx(0.2)
    assert lr_at(3, 1.0, 10, 100, kind="constant") == pytest.approx(0.4)
    assert lr_at(80, 1.0, 10, 100, kind="constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(50, 1.0, 10, 100, kind="step")


def test_label_smoothing_mixes_in_the_uniform_distribution():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 9)
    ids = torch.tensor([[1, 3, 4, 2], [1, 5, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    log_probs = logits.log_softmax(-1)
    targets = [(0, 0, 3), (0, 1, 4), (0, 2, 2), (1, 0, 5), (1, 1, 2)]
    eps = 0.1
    expected = sum((1 - eps) * -log_probs[b, t, v] + eps * -log_probs[b, t].mean() for b, t, v in targets) / 5
    total, count = caption_loss_sum(logits, ids, mask, label_smoothing=eps)
    assert count == 5 and total.item() / count == pytest.approx(expected.item(), abs=1e-5)


def test_sample_stream_shards_without_duplicates_and_resumes_from_a_cursor():
    one = SampleStream(10, 4, seed=3)
    batches = one.batches(0)
    first_eight = [next(batches) for _ in range(5)]  # 20 samples: two whole epochs
    flat = [i for batch in first_eight for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # each epoch is reshuffled
    resumed = one.batches(8)  # after two batches
    assert [next(resumed) for _ in range(3)] == first_eight[2:5]
    shards = [SampleStream(10, 2, seed=3, rank=r, world_size=2).batches(0) for r in range(2)]
    for expected in first_eight:
        assert next(shards[0]) + next(shards[1]) == expected  # the two ranks split the same global batch
