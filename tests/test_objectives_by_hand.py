"""The training objectives against numbers computed by hand: a scripted bigram model whose every probability is a
row of one table, so each token's log-probability and each gradient is a short formula, summed here in plain loops.

Cross-entropy: targets are the next real token (padding found by the mask, the start token never a target), the loss
is the mean over the step's real tokens whatever the micro-batches, with torch's label smoothing. Self-critical: the
samples come from the model at the configured temperature, the reward is CIDEr-D with the training references'
document frequencies, the loss is ``-(reward - baseline) * log p`` over the sampled tokens up to and including eos,
averaged over those tokens, and a sample that beats its baseline gets more likely. Every family scores a sample
with the log-probability it was drawn with (no scheduled sampling, no prompt or prefix in the sum).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

import pytest
import torch

from _helpers import FAMILIES, UnsavedModel, tiny_model
from captionkit.config import ScstSection, TrainSection
from captionkit.data.dataset import Batch
from captionkit.decoding import generate
from captionkit.models.base import Encoded
from captionkit.models.registry import create_model, train_tokenizer
from captionkit.text import CaptionTokenizer, train_word_tokenizer
from captionkit.text.styles import add_style_tokens
from captionkit.training.loss import caption_loss_total
from captionkit.training.scst import CiderReward, StyleCiderReward, sampling_config
from captionkit.training.steps import CrossEntropyStep, ScstStep

CPU = torch.device("cpu")
WORDS = ["a red circle", "a blue square", "the green triangle"]


class Bigram(UnsavedModel):
    """p(next | previous) = softmax(table[previous]): the image plays no part."""

    family = "bigram"

    def __init__(self, table: torch.Tensor, tokenizer: CaptionTokenizer) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())
        self.bos_token_id, self.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.pad_token_id, self.vocab_size = tokenizer.pad_token_id, table.shape[0]

    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        return Encoded(pixel_values.flatten(1)[:, None, :1])

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoded: Encoded | None = None,
    ) -> torch.Tensor:
        return self.table[input_ids]

    def init_state(self, encoded: Encoded) -> None:
        return None

    def step(self, tokens: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        return torch.log_softmax(self.table[tokens], dim=-1), state

    def reorder_state(self, state: None, index: torch.Tensor, row_image: tuple[int, ...]) -> None:
        return state


def bigram(tokenizer: CaptionTokenizer, seed: int = 0, eos_bias: float = 0.0) -> Bigram:
    generator = torch.Generator().manual_seed(seed)
    size = tokenizer.vocab_size
    table = 2.0 * torch.randn(size, size, generator=generator)
    table[:, tokenizer.eos_token_id] += eos_bias
    return Bigram(table, tokenizer)


def log_probs(model: Bigram, previous: int, temperature: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(model.table.detach()[previous] / temperature, dim=-1)


def sgd(model: torch.nn.Module, lr: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr)


# --- cross-entropy


def test_cross_entropy_step_is_the_smoothed_token_mean_over_micro_batches_by_hand(single_thread):
    tokenizer = train_word_tokenizer(WORDS)
    (style,) = add_style_tokens(tokenizer, ["positive"]).values()
    model = bigram(tokenizer)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    words = [tokenizer.encode(caption) for caption in WORDS]
    # Micro-batch 1: a styled caption (its style token is the start, never a target) and a shorter plain one,
    # padded with eos as GPT-2 pads: padding is where the mask says, whatever its id. Micro-batch 2: one caption
    # holding the pad id as a real token (the mask counts it), padded with pad.
    first = torch.tensor([[style, *words[0], eos], [bos, *words[1][:1], eos, eos, eos]])
    first_mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    second = torch.tensor([[bos, pad, *words[2], eos, pad, pad]])
    second_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    micro = [Batch(torch.zeros(2, 3, 4, 4), first, first_mask, ["x", "y"], 0)]
    micro.append(Batch(torch.zeros(1, 3, 4, 4), second, second_mask, ["z"], 0))
    smoothing = 0.1
    settings = TrainSection(grad_clip=0.0, label_smoothing=smoothing)
    output = CrossEntropyStep(model, sgd(model), settings, CPU)(micro, step=0)

    targets = []  # (previous token, target) of every predicted token: each real token after its row's first
    for batch in micro:
        for ids, mask in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(), strict=True):
            real = [token for token, keep in zip(ids, mask, strict=True) if keep]
            targets += list(pairwise(real))
    assert len(targets) == 4 + 2 + 5
    size = tokenizer.vocab_size
    loss = nll = 0.0
    grad = torch.zeros(size, size)
    for previous, target in targets:
        row = log_probs(model, previous)
        nll += -row[target].item()
        loss += (1 - smoothing) * -row[target].item() + smoothing / size * -row.sum().item()
        wanted = torch.full((size,), smoothing / size)
        wanted[target] += 1 - smoothing
        grad[previous] += (row.exp() - wanted) / len(targets)

    assert output is not None and output.tokens == len(targets)
    assert output.loss.item() == pytest.approx(loss / len(targets), rel=1e-6)
    assert output.nll_sum is not None and output.nll_sum.item() == pytest.approx(nll, rel=1e-6)
    assert model.table.grad is not None and torch.allclose(model.table.grad, grad, atol=1e-6)


def test_label_smoothed_loss_and_its_nll_by_hand():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 7)
    ids = torch.tensor([[1, 5, 6, 2], [1, 4, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    smoothing = 0.2
    loss = nll = 0.0
    for row, t in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]:
        probs = logits[row, t].softmax(-1)
        target = ids[row, t + 1].item()
        nll -= math.log(probs[target].item())
        # The smoothed target: 1 - e on the label plus e spread evenly over all 7 tokens.
        loss -= sum(((1 - smoothing) * (v == target) + smoothing / 7) * math.log(probs[v].item()) for v in range(7))
    got_loss, got_nll = caption_loss_total(logits, ids, mask, smoothing)
    assert got_loss.item() == pytest.approx(loss, rel=1e-5)
    assert got_nll.item() == pytest.approx(nll, rel=1e-5)


# --- self-critical


class LikedWords:
    """A reward by hand: how often the caption says its image's word, plus 0.1 a word (so no two rewards tie).
    With ``styles`` it is a style run's reward (a :class:`StyleCiderReward`), the style's own word counting too."""

    def __init__(self, liked: dict[str, str]) -> None:
        self.liked = liked

    def of(self, image_id: str, caption: str, style: str = "neutral") -> float:
        words = caption.split()
        return words.count(self.liked[image_id]) + words.count(style) + 0.1 * len(words)

    def __call__(self, image_ids: Sequence[str], captions: Sequence[Sequence[str]]) -> torch.Tensor:
        return torch.tensor([[self.of(i, c) for c in group] for i, group in zip(image_ids, captions, strict=True)])


class StyledLikedWords(StyleCiderReward):
    def __init__(self, liked: dict[str, str]) -> None:
        self.hand = LikedWords(liked)

    def __call__(
        self, image_ids: Sequence[str], captions: Sequence[Sequence[str]], styles: Sequence[str]
    ) -> torch.Tensor:
        rows = zip(image_ids, captions, styles, strict=True)
        return torch.tensor([[self.hand.of(i, c, s) for c in group] for i, group, s in rows])


def greedy_by_hand(model: Bigram, start: int, max_new_tokens: int) -> tuple[list[int], bool]:
    """The argmax chain from ``start``: (tokens without eos, finished)."""
    tokens, previous = [], start
    for _ in range(max_new_tokens):
        previous = int(model.table.detach()[previous].argmax())
        if previous == model.eos_token_id:
            return tokens, True
        tokens.append(previous)
    return tokens, False


def image_batch(starts: list[int], image_ids: list[str]) -> list[Batch]:
    """One micro-batch of images; SCST reads only each caption's start token (its style)."""
    ids = torch.tensor([[start, 2] for start in starts])
    return [Batch(torch.zeros(len(starts), 3, 4, 4), ids, torch.ones_like(ids), image_ids, 0)]


@pytest.mark.parametrize(("baseline", "styled"), [("mean", False), ("greedy", False), ("mean", True), ("greedy", True)])
def test_scst_loss_and_gradient_by_hand(baseline, styled, single_thread):
    tokenizer = train_word_tokenizer([*WORDS, "positive"])
    liked = {"x": "red", "y": "blue", "z": "green"}
    reward: LikedWords | StyledLikedWords = LikedWords(liked)
    starts = [tokenizer.bos_token_id] * 3
    styles = ["neutral"] * 3
    if styled:
        (style_token,) = add_style_tokens(tokenizer, ["positive"]).values()
        reward = StyledLikedWords(liked)
        starts = [style_token, tokenizer.bos_token_id, style_token]
        styles = ["positive", "neutral", "positive"]
    model = bigram(tokenizer, seed=1, eos_bias=1.5)
    config = ScstSection(num_samples=4, baseline=baseline, max_new_tokens=4, temperature=0.7, unfinished_penalty=0.3)
    settings = TrainSection(scst=config, batch_size=3, grad_clip=0.0)
    step = ScstStep(model, sgd(model), settings, CPU, tokenizer, reward)  # type: ignore[arg-type]
    output = step(image_batch(starts, list(liked)), step=5)

    # The samples: the model's own, at the step's documented seed (image i draws from seed + i).
    encoded = Encoded(torch.zeros(3, 1, 1))
    samples = generate(model, encoded=encoded, config=sampling_config(config, step.seed(5)), starts=starts)
    hand = LikedWords(liked)

    def scored(image: int, tokens: list[int], finished: bool) -> float:
        return hand.of(list(liked)[image], tokenizer.decode(tokens), styles[image]) - 0.3 * (not finished)

    size, temperature = tokenizer.vocab_size, 0.7
    loss, tokens, grad = 0.0, 0, torch.zeros(size, size)
    rewards, baselines = [], []
    for image, group in enumerate(samples):
        mine = [scored(image, h.token_ids, h.finished) for h in group]
        greedy = scored(image, *greedy_by_hand(model, starts[image], 4))
        for k, h in enumerate(group):
            bar = (sum(mine) - mine[k]) / 3 if baseline == "mean" else greedy
            rewards.append(mine[k])
            baselines.append(bar)
            advantage = mine[k] - bar
            # The sampled tokens up to and including eos (none for a caption cut at the limit), after the start.
            sequence = [starts[image], *h.token_ids, *([tokenizer.eos_token_id] if h.finished else [])]
            for previous, token in pairwise(sequence):
                row = log_probs(model, previous, temperature)
                loss -= advantage * row[token].item()
                tokens += 1
                onehot = torch.zeros(size)
                onehot[token] = 1.0
                grad[previous] -= advantage * (onehot - row.exp()) / temperature
    assert any(not h.finished for group in samples for h in group) and any(h.finished for g in samples for h in g)
    assert len({tuple(h.token_ids) for group in samples for h in group}) > 3  # drawn, not one greedy caption

    assert output is not None
    assert output.stats["sample_length"] == pytest.approx(tokens / 12)
    assert output.stats["reward"] == pytest.approx(sum(rewards) / 12, rel=1e-6)
    assert output.stats["reward_baseline"] == pytest.approx(sum(baselines) / 12, rel=1e-6)
    assert output.loss.item() == pytest.approx(loss / tokens, rel=1e-5)
    assert model.table.grad is not None and torch.allclose(model.table.grad, grad / tokens, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_samples_are_drawn_from_the_model_at_the_configured_temperature(temperature, single_thread):
    tokenizer = train_word_tokenizer(WORDS)
    model = bigram(tokenizer, seed=2)
    config = ScstSection(num_samples=40, max_new_tokens=1, temperature=temperature)
    settings = TrainSection(scst=config, batch_size=50, grad_clip=0.0)
    step = ScstStep(model, sgd(model), settings, CPU, tokenizer, LikedWords(dict.fromkeys(map(str, range(50)), "a")))
    ((_, sampled),) = step.rollouts(image_batch([tokenizer.bos_token_id] * 50, [str(i) for i in range(50)]), step=0)
    drawn = Counter(sampled.ids[:, 1].tolist())
    expected = log_probs(model, tokenizer.bos_token_id, temperature).exp()
    plain = log_probs(model, tokenizer.bos_token_id).exp()
    assert (expected - plain).abs().max() > 0.08  # the temperature makes a difference this test can see
    # 2,000 draws: a frequency's standard error is at most 0.011.
    for token in range(tokenizer.vocab_size):
        assert drawn[token] / 2000 == pytest.approx(expected[token].item(), abs=0.035), token


def test_a_sample_that_beats_its_baseline_gets_more_likely(single_thread):
    tokenizer = train_word_tokenizer(WORDS)
    model = bigram(tokenizer, seed=4, eos_bias=2.0)
    config = ScstSection(num_samples=2, max_new_tokens=4, temperature=1.5)
    step = ScstStep(model, sgd(model, lr=2.0), TrainSection(scst=config, batch_size=1, grad_clip=0.0), CPU, tokenizer,
                    LikedWords({"x": "red"}))  # fmt: skip
    micro = image_batch([tokenizer.bos_token_id], ["x"])
    ((_, sampled),) = step.rollouts(micro, step=0)
    better, worse = (0, 1) if sampled.rewards[0, 0] > sampled.rewards[0, 1] else (1, 0)
    assert sampled.rewards[0, better] > sampled.rewards[0, worse]

    def log_prob(row: int) -> float:
        ids, mask = sampled.ids[row].tolist(), sampled.mask[row].tolist()
        real = [token for token, keep in zip(ids, mask, strict=True) if keep]
        return sum(log_probs(model, a, 1.5)[b].item() for a, b in pairwise(real))

    before = log_prob(better) - log_prob(worse)
    assert step(micro, step=0) is not None
    assert log_prob(better) - log_prob(worse) > before + 0.1


def brute_force_cider_d(candidate: str, references: list[str], corpus: dict[str, list[str]]) -> float:
    """CIDEr-D as pycocoevalcap's CiderScorer defines it, document frequencies from ``corpus`` (every image's
    references): tf-idf per n-gram order, clipped, length-penalised (bigram counts, sigma 6), times 10."""

    def grams(caption: str) -> list[Counter[tuple[str, ...]]]:
        words = caption.split()
        return [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, 5)]

    frequency: Counter[tuple[str, ...]] = Counter()
    for refs in corpus.values():
        frequency.update({gram for ref in refs for order in grams(ref) for gram in order})
    log_n = math.log(len(corpus))

    def vector(caption: str) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        orders = [{g: tf * (log_n - math.log(max(1.0, frequency[g]))) for g, tf in c.items()} for c in grams(caption)]
        norms = [math.sqrt(sum(v * v for v in order.values())) for order in orders]
        return orders, norms, sum(grams(caption)[1].values())

    mine, my_norms, my_length = vector(candidate)
    total = 0.0
    for ref in references:
        theirs, their_norms, their_length = vector(ref)
        penalty = math.exp(-((my_length - their_length) ** 2) / (2 * 6.0**2))
        for n in range(4):
            value = sum(min(v, theirs[n].get(g, 0.0)) * theirs[n].get(g, 0.0) for g, v in mine[n].items())
            if my_norms[n] and their_norms[n]:
                value /= my_norms[n] * their_norms[n]
            total += value * penalty / 4
    return 10.0 * total / len(references)


def test_cider_d_reward_uses_the_training_references_document_frequencies():
    corpus = {
        "red": ["a red circle", "a red circle on the left", "the circle is red"],
        "blue": ["a blue square", "a blue square at the top", "the square is blue"],
        "green": ["a green triangle", "a small green triangle", "the triangle is green"],
        "grey": ["a grey circle on a square", "a circle and a square"],
    }
    reward = CiderReward(corpus)
    image_ids = ["blue", "red", "blue"]  # a batch: some of the training images, one twice
    captions = [["a blue square", "a square"], ["the red circle", "a red circle on the left"], ["blue", "a cat"]]
    got = reward(image_ids, captions)
    for row, image_id in enumerate(image_ids):
        for column, caption in enumerate(captions[row]):
            expected = brute_force_cider_d(caption, corpus[image_id], corpus)
            assert got[row, column].item() == pytest.approx(expected, abs=1e-5), caption
    # Frequencies from the batch's references alone would give other numbers: the test tells them apart.
    batch_only = {image_id: corpus[image_id] for image_id in image_ids}
    assert brute_force_cider_d("a square", corpus["blue"], batch_only) != pytest.approx(got[0, 1].item(), abs=1e-3)


def test_scheduled_sampling_stays_out_of_the_scoring_of_sampled_captions(single_thread):
    # A cnn-lstm trained with scheduled sampling (teacher_forcing_ratio < 1) feeds its own greedy word in place of
    # the given one in training mode. An SCST step scores the captions it sampled: it must feed exactly the sampled
    # words, or a token's log-probability is taken after words the sample never had. No dropout and cached
    # features, so that the training-mode step and the evaluation-mode scoring below differ in nothing else.
    tokenizer = train_word_tokenizer(WORDS)
    torch.manual_seed(0)
    model = create_model("cnn-lstm", "tiny", tokenizer, teacher_forcing_ratio=0.5, dropout=0.0)
    with torch.no_grad():
        features = model.encode(torch.randn(2, 3, 32, 32)).tokens
    config = ScstSection(num_samples=3, max_new_tokens=6)
    step = ScstStep(model, sgd(model), TrainSection(scst=config, batch_size=2, grad_clip=0.0), CPU, tokenizer,
                    LikedWords({"x": "red", "y": "blue"}))  # fmt: skip
    (batch,) = image_batch([tokenizer.bos_token_id] * 2, ["x", "y"])
    micro = [Batch(torch.empty(0), batch.input_ids, batch.attention_mask, batch.image_ids, 0, features)]
    ((_, sampled),) = step.rollouts(micro, step=2)
    model.train()
    output = step(micro, step=2)
    got = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    model.eval()  # evaluation mode: plain teacher forcing on the sampled words
    logits = model(None, sampled.ids, sampled.mask, encoded=Encoded(features).index_select(sampled.rows))
    token_log_probs = logits[:, :-1].log_softmax(-1).gather(-1, sampled.ids[:, 1:, None]).squeeze(-1)
    loss = -(sampled.advantage[:, None] * token_log_probs * sampled.mask[:, 1:]).sum() / sampled.tokens
    loss.backward()
    assert output is not None and output.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert got and all(torch.allclose(got[n], p.grad, atol=1e-6) for n, p in model.named_parameters() if n in got)


@pytest.mark.parametrize("family", [*FAMILIES, "blip-with-prompt"])
def test_scst_scores_each_sample_with_the_log_probability_it_was_drawn_with(family, single_thread):
    # Every family: the scoring pass's summed log-probability of a sample's tokens (eos included, the start token,
    # BLIP's prompt and ClipCap's prefix not) is the one the sampler accumulated while drawing it, step by step.
    tokenizer = train_tokenizer(family.removesuffix("-with-prompt"), WORDS * 10, 300)
    model = tiny_model(family.removesuffix("-with-prompt"), 0, tokenizer).eval()
    if family == "blip-with-prompt":
        model.set_prompt(tuple(tokenizer.encode("the")))
    config = ScstSection(num_samples=3, max_new_tokens=5)
    step = ScstStep(model, sgd(model), TrainSection(scst=config, batch_size=2, grad_clip=0.0), CPU, tokenizer,
                    LikedWords({"x": "red", "y": "blue"}))  # fmt: skip
    (batch,) = image_batch([tokenizer.bos_token_id] * 2, ["x", "y"])
    batch.pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ((_, sampled),) = step.rollouts([batch], step=1)
    with torch.no_grad():
        logits = step.scores(batch, sampled.ids, sampled.rows, sampled.mask)
        encoded = model.encode(batch.pixel_values)
    drawn = generate(model, encoded=encoded, config=sampling_config(config, step.seed(1)))
    token_log_probs = logits[:, :-1].float().log_softmax(-1).gather(-1, sampled.ids[:, 1:, None]).squeeze(-1)
    scored = (token_log_probs * sampled.mask[:, 1:]).sum(-1)
    expected = torch.tensor([h.log_prob for group in drawn for h in group])
    assert torch.allclose(scored, expected, atol=1e-4), (scored, expected)
