"""The decoding engine against brute force and first principles, on a scripted model whose every next-token
distribution the test chooses (tests/test_decoding.py checks it against transformers on tiny real models)."""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from _helpers import UnsavedModel
from captionkit.decoding import DecodingConfig, Hypothesis, decoding_options, generate
from captionkit.decoding.options import ALIASES, OPTIONS, decoding_request, option_errors
from captionkit.errors import InputError
from captionkit.models.base import Encoded

BOS, EOS = 1, 2
# (image, tokens generated so far) -> next-token logits; None: the scripted model's seeded random ones.
Script = Callable[[int, tuple[int, ...]], Sequence[float] | None]
Caption = tuple[float, list[int]]  # (score, generated tokens, a final eos included)


class ScriptedModel(UnsavedModel):
    """A decoder with no weights: the next-token distribution of a row is ``script(image, prefix)`` (logits), or, where
    the script gives None, logits drawn from a generator seeded by (seed, image, prefix). The same prefix of the same
    image always gets the same distribution, however rows are batched, reordered or dropped."""

    family = "scripted"

    def __init__(self, vocab_size: int = 3, script: Script | None = None, seed: int = 0) -> None:
        super().__init__()
        self.vocab_size, self.bos_token_id, self.eos_token_id, self.pad_token_id = vocab_size, BOS, EOS, 0
        self.script = script or (lambda image, prefix: None)
        self.seed = seed

    def log_probs(self, image: int, prefix: tuple[int, ...]) -> torch.Tensor:
        logits = self.script(image, prefix)
        if logits is None:
            key = zlib.crc32(repr((self.seed, image, prefix)).encode())
            return (torch.randn(self.vocab_size, generator=torch.Generator().manual_seed(key)) * 2).log_softmax(-1)
        return torch.tensor(logits, dtype=torch.float32).log_softmax(-1)

    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        raise NotImplementedError("decode from images(...)")

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("a scripted model only decodes")

    def init_state(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        image = encoded.tokens[:, 0, 0].long()
        return {"image": image, "fed": torch.zeros((len(image), 0), dtype=torch.long)}

    def step(self, tokens: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        fed = torch.cat((state["fed"], tokens[:, None]), dim=1)
        # The start token is fed first; the prefix is what was generated after it.
        rows = [
            self.log_probs(int(image), tuple(row[1:].tolist())) for image, row in zip(state["image"], fed, strict=True)
        ]
        return torch.stack(rows), {"image": state["image"], "fed": fed}

    def reorder_state(
        self, state: dict[str, torch.Tensor], index: torch.Tensor, row_image: tuple[int, ...]
    ) -> dict[str, torch.Tensor]:
        return {name: rows.index_select(0, index) for name, rows in state.items()}


def images(*ids: int) -> Encoded:
    """What a scripted model decodes: image ids, as encoder output."""
    return Encoded(torch.tensor(ids, dtype=torch.float32)[:, None, None])


def brute_force(
    model: ScriptedModel, image: int, max_new: int, length_penalty: float = 1.0, min_new: int = 0
) -> list[Caption]:
    """Every caption the model can give within ``max_new`` tokens (eos no sooner than ``min_new``), scored
    ``sum of log-probs / generated length ** length_penalty``, best first."""
    words = [token for token in range(model.vocab_size) if token != EOS]
    endings = [(*prefix, EOS) for n in range(min_new, max_new) for prefix in itertools.product(words, repeat=n)]
    cut = list(itertools.product(words, repeat=max_new))
    scored = []
    for tokens in endings + cut:
        log_prob = sum(float(model.log_probs(image, tokens[:at])[token]) for at, token in enumerate(tokens))
        if log_prob > -math.inf:
            scored.append((log_prob / len(tokens) ** length_penalty, list(tokens)))
    return sorted(scored, key=lambda caption: -caption[0])


def found(hypotheses: list[Hypothesis]) -> list[Caption]:
    return [(h.score, h.token_ids + [EOS] * h.finished) for h in hypotheses]


def assert_same(ours: list[Caption], expected: list[Caption]) -> None:
    assert [tokens for _, tokens in ours] == [tokens for _, tokens in expected]
    assert [score for score, _ in ours] == pytest.approx([score for score, _ in expected], rel=1e-5, abs=1e-6)


# --- beam search against brute force


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 0.5, 2.0, 5.0, -1.0])
@pytest.mark.parametrize("early_stopping", ["never", False, True])
def test_a_beam_wider_than_every_caption_returns_them_all_best_first(
    length_penalty: float, early_stopping: Any
) -> None:
    # 2 words + eos, 3 tokens at most: 7 captions end with eos, 8 are cut at the limit. 16 beams keep them all, and
    # more beams than captions is what leaves some beams without a real caption to follow.
    model = ScriptedModel(vocab_size=3, seed=1)
    config = DecodingConfig(
        max_new_tokens=3,
        num_beams=16,
        num_return_sequences=16,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    for image, hypotheses in enumerate(generate(model, encoded=images(0, 1), config=config)):
        expected = brute_force(model, image, 3, length_penalty)
        assert len(expected) == 15
        assert_same(found(hypotheses), expected)
        assert all(
            h.log_prob == pytest.approx(h.score * len(tokens) ** length_penalty, rel=1e-5)
            for h, (_, tokens) in zip(hypotheses, expected, strict=True)
        )


def test_beams_without_a_real_caption_never_push_a_real_one_out() -> None:
    # Word 1 is impossible and eos only possible at the first two steps: 3 captions exist (eos; 0 eos; 0 x 80) and 6
    # beams have nothing real to follow. Their impossible endings score about -1e9 / 80 ** 5 = -0.3 at length 80, above
    # the empty caption's log(0.2): they took its finished slot, and 2 captions came back.
    model = ScriptedModel(
        script=lambda image, prefix: [0.0, -math.inf, math.log(0.25) if len(prefix) < 2 else -math.inf]
    )
    config = DecodingConfig(
        max_new_tokens=80, num_beams=6, num_return_sequences=4, length_penalty=5.0, early_stopping="never"
    )
    expected = [
        (2 * math.log(0.8) / 80**5, [0] * 80),
        ((math.log(0.8) + math.log(0.2)) / 2**5, [0, EOS]),
        (math.log(0.2), [EOS]),
    ]
    assert_same(found(generate(model, encoded=images(0), config=config)[0]), expected)


@pytest.mark.parametrize("length_penalty", [1.0, -1.0, 2.0])
@pytest.mark.parametrize("min_new", [1, 2, 4])
def test_min_new_tokens_leaves_out_exactly_the_captions_that_end_sooner(min_new: int, length_penalty: float) -> None:
    # The eos forbidden before min_new tokens sums to -inf: such endings never join, whatever the length penalty
    # makes of their scores (a negative one multiplies, and no impossible ending may outrank a real caption).
    model = ScriptedModel(vocab_size=3, seed=2)
    config = DecodingConfig(
        max_new_tokens=4,
        min_new_tokens=min_new,
        num_beams=32,
        num_return_sequences=32,
        length_penalty=length_penalty,
        early_stopping="never",
    )
    hypotheses = generate(model, encoded=images(3), config=config)[0]
    assert_same(found(hypotheses), brute_force(model, 3, 4, length_penalty, min_new=min_new))
    # min_new words at least, then eos: min_new + 1 generated tokens, or max_new cut short of an eos.
    assert min(len(h.token_ids) + h.finished for h in hypotheses) == min(min_new + 1, 4)


@pytest.mark.parametrize("beams", [2, 3, 5])
def test_n_best_of_a_narrow_beam_are_real_captions_with_their_exact_scores(beams: int) -> None:
    model = ScriptedModel(vocab_size=4, seed=3)
    exact = {tuple(tokens): score for score, tokens in brute_force(model, 0, 4)}
    config = DecodingConfig(max_new_tokens=4, num_beams=beams, num_return_sequences=beams)
    hypotheses = generate(model, encoded=images(0), config=config)[0]
    assert len(hypotheses) == beams
    for score, tokens in found(hypotheses):
        assert score == pytest.approx(exact[tuple(tokens)], rel=1e-5)
    assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)
    assert hypotheses[0].score <= max(exact.values()) + 1e-6


def test_eos_first_is_the_empty_caption_scored_by_its_one_token() -> None:
    # eos has probability 0.9 at the first step; any caption that does not end there scores lower.
    model = ScriptedModel(script=lambda image, prefix: [0.0, 0.0, math.log(18.0)] if not prefix else [0.0, 0.0, 0.0])
    empty = Hypothesis([], math.log(0.9), math.log(0.9), True)
    greedy = generate(model, encoded=images(0), config=DecodingConfig(max_new_tokens=3))[0]
    beam = generate(model, encoded=images(0), config=DecodingConfig(max_new_tokens=3, num_beams=4))[0]
    sampled = DecodingConfig(max_new_tokens=3, do_sample=True, top_k=1, num_return_sequences=2, seed=0)
    for hypotheses in (greedy, beam, generate(model, encoded=images(0), config=sampled)[0]):
        assert [h.token_ids for h in hypotheses] == [[]] * len(hypotheses)
        assert hypotheses[0].finished and hypotheses[0].score == pytest.approx(empty.score)


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_without_eos_every_caption_is_cut_at_max_new_tokens(length_penalty: float) -> None:
    # eos is impossible; after n words, word 0 has odds 3 e**n against word 1 (and word 1 lowers word 0's odds later).
    model = ScriptedModel(script=lambda image, prefix: [math.log(3.0) + len(prefix) - sum(prefix), 0.0, -math.inf])
    odds = [3.0, 3.0 * math.e, 3.0 * math.e**2]
    expected = sum(math.log(odd / (odd + 1.0)) for odd in odds) / 3**length_penalty
    greedy = generate(model, encoded=images(0), config=DecodingConfig(max_new_tokens=3, length_penalty=length_penalty))
    assert found(greedy[0]) == [(pytest.approx(expected), [0, 0, 0])]
    assert not greedy[0][0].finished
    config = DecodingConfig(max_new_tokens=3, num_beams=8, num_return_sequences=8, length_penalty=length_penalty)
    assert_same(found(generate(model, encoded=images(0), config=config)[0]), brute_force(model, 0, 3, length_penalty))


def test_the_length_penalty_divides_by_the_generated_length_eos_included() -> None:
    # Word 0 or eos first, 1/2 each; after word 0, eos with 0.9. The empty caption: log(1/2) over 1 generated token;
    # "0": log(0.45) over 2 (eos included), "0 0" (cut at the limit): log(0.05) over 2. Summed, the empty caption is
    # the best; per token ("Beam score = log-prob / length ** this", README and DecodingConfig), "0" is.
    model = ScriptedModel(script=lambda image, prefix: [0.0, -math.inf, math.log(9.0) if prefix else 0.0])
    for penalty, best in [(0.0, [EOS]), (0.5, [0, EOS]), (1.0, [0, EOS]), (2.0, [0, EOS]), (-1.0, [EOS])]:
        config = DecodingConfig(max_new_tokens=2, num_beams=4, num_return_sequences=3, length_penalty=penalty)
        ours = found(generate(model, encoded=images(0), config=config)[0])
        scores = {(EOS,): math.log(0.5), (0, EOS): math.log(0.45) / 2**penalty, (0, 0): math.log(0.05) / 2**penalty}
        assert ours[0][1] == best
        assert {tuple(tokens): score for score, tokens in ours} == pytest.approx(scores)


def test_tied_captions_are_all_returned_with_equal_scores_and_greedy_takes_the_lowest_id() -> None:
    # Words 0 and 3 tie at the first step; each then ends with eos for sure: two captions of equal score.
    model = ScriptedModel(
        vocab_size=4,
        script=lambda image, prefix: [1.0, -math.inf, -math.inf, 1.0] if not prefix else [0.0, 0.0, 50.0, 0.0],
    )
    config = DecodingConfig(max_new_tokens=3, num_beams=4, num_return_sequences=2)
    batched = generate(model, encoded=images(0, 1, 2), config=config)
    first, second = batched[0]
    assert sorted([first.token_ids, second.token_ids]) == [[0], [3]]
    assert first.score == second.score
    assert batched[1:] == [batched[0], batched[0]]
    assert generate(model, encoded=images(0), config=config) == batched[:1]
    greedy = generate(model, encoded=images(0), config=DecodingConfig(max_new_tokens=3))[0]
    assert [h.token_ids for h in greedy] == [[0]]


# --- sampling from first principles


def expected_distribution(logits: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """The distribution the engine documents: softmax(logits / temperature), cut to the top_k most likely tokens, then
    to the fewest most likely tokens whose mass reaches top_p, renormalised."""
    probs = torch.tensor(logits, dtype=torch.float64).div(temperature).softmax(-1).tolist()
    order = sorted(range(len(probs)), key=lambda token: -probs[token])
    kept = order[:top_k] if top_k else order
    mass, nucleus = 0.0, []
    for token in kept:
        nucleus.append(token)
        mass += probs[token] / sum(probs[t] for t in kept)
        if mass >= top_p:
            break
    total = sum(probs[token] for token in nucleus)
    return [probs[token] / total if token in nucleus else 0.0 for token in range(len(probs))]


LOGITS = [math.log(0.05), math.log(0.15), math.log(0.2), math.log(0.1), math.log(0.5)]


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [
        (1.0, 0, 1.0),  # no warping: the model's own distribution
        (1.0, 5, 1.0),  # top_k of the whole vocabulary is off too
        (2.0, 0, 1.0),
        (0.5, 0, 1.0),
        (1.0, 3, 1.0),
        (1.0, 0, 0.75),
        # Temperature comes first: at 0.3 token 4 alone holds more than 0.75 of the mass, so it is the only one left.
        (0.3, 0, 0.75),
        # ... and at 3 four tokens are needed to reach 0.75 (at temperature 1 three would do).
        (3.0, 0, 0.75),
        (2.0, 3, 0.6),
    ],
)
def test_sampled_tokens_follow_the_warped_distribution(temperature: float, top_k: int, top_p: float) -> None:
    model = ScriptedModel(vocab_size=5, script=lambda image, prefix: LOGITS)
    config = DecodingConfig(
        max_new_tokens=1,
        do_sample=True,
        num_return_sequences=64,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=0,
    )
    draws = [
        h.token_ids[0] if h.token_ids else EOS
        for per_image in generate(model, encoded=images(*range(40)), config=config)
        for h in per_image
    ]
    counts = torch.bincount(torch.tensor(draws), minlength=5).double() / len(draws)
    expected = torch.tensor(expected_distribution(LOGITS, temperature, top_k, top_p), dtype=torch.float64)
    assert torch.equal(counts == 0, expected == 0)  # what is cut is never drawn
    # 2560 draws: a frequency's standard deviation is at most 0.01; seeds 0 to 39 stay within 0.03.
    torch.testing.assert_close(counts, expected, rtol=0, atol=0.03)


def test_warped_samples_still_report_the_models_own_log_prob() -> None:
    model = ScriptedModel(vocab_size=5, script=lambda image, prefix: LOGITS)
    config = DecodingConfig(max_new_tokens=1, do_sample=True, num_return_sequences=8, temperature=0.3, seed=4)
    for h in generate(model, encoded=images(0), config=config)[0]:
        token = h.token_ids[0] if h.token_ids else EOS
        assert h.log_prob == pytest.approx(math.log([0.05, 0.15, 0.2, 0.1, 0.5][token]), abs=1e-6)


# --- batches


def mixed_lengths(image: int, prefix: tuple[int, ...]) -> list[float] | None:
    """Image 0 ends at once, image 1 never ends, image 2 ends after 2 words, the rest are random."""
    if image == 0:
        return [0.0, 0.0, 30.0, 0.0]
    if image == 1:
        return [0.5, 0.0, -math.inf, 1.0]
    if image == 2:
        return [1.0, 0.0, 30.0 if len(prefix) == 2 else -math.inf, 0.0]
    return None


STRATEGIES = {
    "greedy": DecodingConfig(max_new_tokens=5),
    "beam": DecodingConfig(max_new_tokens=5, num_beams=3, num_return_sequences=3),
    "wide beam": DecodingConfig(max_new_tokens=5, num_beams=12, num_return_sequences=5, early_stopping="never"),
    "sample": DecodingConfig(max_new_tokens=5, do_sample=True, num_return_sequences=3, seed=9),
    "warped sample": DecodingConfig(
        max_new_tokens=5, do_sample=True, num_return_sequences=2, seed=3, temperature=0.7, top_k=3, top_p=0.9
    ),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_batch_of_mixed_lengths_equals_its_images_one_at_a_time(strategy: str) -> None:
    model = ScriptedModel(vocab_size=4, script=mixed_lengths, seed=5)
    config = STRATEGIES[strategy]
    order = [3, 0, 4, 1, 5, 2]
    batched = generate(model, encoded=images(*order), config=config)
    lengths = {len(h.token_ids) for per_image in batched for h in per_image}
    assert {0, 5} <= lengths  # some rows end at the first step, some at the limit
    for position, image in enumerate(order):
        alone = generate(model, encoded=images(image), config=config, image_offset=position)
        assert alone == [batched[position]]
    # A batch cut in two, each part told where it starts, gives the same captions: seeds follow the input position.
    parts = generate(model, encoded=images(*order[:4]), config=config)
    parts += generate(model, encoded=images(*order[4:]), config=config, image_offset=4)
    assert parts == batched


def test_greedy_and_beam_search_agree_where_the_greedy_caption_is_the_best() -> None:
    # On these images the most likely token at each step also makes the most likely caption.
    model = ScriptedModel(vocab_size=4, script=mixed_lengths)
    greedy = generate(model, encoded=images(0, 1, 2), config=DecodingConfig(max_new_tokens=5))
    beam = generate(model, encoded=images(0, 1, 2), config=DecodingConfig(max_new_tokens=5, num_beams=4))
    assert [per_image[0].token_ids for per_image in beam] == [per_image[0].token_ids for per_image in greedy]
    assert [per_image[0].token_ids for per_image in greedy] == [[], [3, 3, 3, 3, 3], [0, 0]]


# --- options


def test_every_alias_is_its_field_and_every_shown_default_is_the_default() -> None:
    values = {"max_new_tokens": 7, "num_beams": 3, "num_return_sequences": 2, "do_sample": False}
    for alias, field in ALIASES.items():
        assert decoding_options(**{alias: values[field]}) == decoding_options(**{field: values[field]})
    defaults = decoding_request().config
    for option in OPTIONS:
        if option.field in ("num_beams", "seed", "style", "prompt"):
            continue  # shown in words: "4, or 1 when sampling", "random", "neutral", "none"
        assert option.default == str(getattr(defaults, option.field)).lower().removesuffix(".0"), option.field
    assert (defaults.num_beams, decoding_request(sample=True).config.num_beams) == (4, 1)
    assert defaults.seed is None and decoding_request().style is None and decoding_request().prompt is None


@pytest.mark.parametrize("off", [{"top_p": 1.0}, {"top_k": 0}, {"top_k": None}, {"top_p": None}, {"seed": None}])
def test_the_off_values_of_the_sampling_options_are_accepted_without_sampling(off: dict[str, Any]) -> None:
    assert decoding_options(**off) == decoding_options()


@pytest.mark.parametrize(
    ("options", "line"),
    [
        # An int past what Python prints (4300 digits) or past float's range: one line, not a ValueError/OverflowError.
        ({"max_length": 10**5000}, "max_length: must be in [1, 1024], got 1.000000e+5000"),
        ({"beams": -(10**5000)}, "beams: must be in [1, 64], got -1.000000e+5000"),
        ({"sample": True, "seed": 10**5000}, "seed: must be in [0, 9223372036854775807], got 1.000000e+5000"),
        ({"sample": 10**5000}, "sample: must be true or false, got 1.000000e+5000"),
        ({"sample": True, "temperature": 10**400}, f"temperature: must be a finite number, got 1{'0' * 36}..."),
        ({"length_penalty": -(10**400)}, f"length_penalty: must be a finite number, got -1{'0' * 35}..."),
        ({"sample": True, "top_p": 10**400}, f"top_p: must be a finite number, got 1{'0' * 36}..."),
        ({"sample": True, "top_k": 2.0}, "top_k: must be an integer, got 2.0"),
        ({"max_length": 3, "min_new_tokens": 4}, "min_new_tokens: must be in [0, 3], got 4"),
        ({"early_stopping": "always"}, "early_stopping: must be true, false or 'never', got 'always'"),
    ],
)
def test_bad_values_are_one_clear_line(options: dict[str, Any], line: str) -> None:
    with pytest.raises(InputError) as raised:
        decoding_options(**options)
    assert str(raised.value) == line


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        ({"max_new_tokens": 10**5000}, "max_new_tokens: must be in [1, 1024], got 1.000000e+5000"),
        ({"do_sample": True, "temperature": 10**400}, f"temperature: must be a finite number, got 1{'0' * 36}..."),
    ],
)
def test_decoding_config_refuses_huge_ints_in_one_line(settings: dict[str, Any], line: str) -> None:
    with pytest.raises(InputError) as raised:
        DecodingConfig(**settings)
    assert str(raised.value) == line


def test_a_name_given_none_is_not_given() -> None:
    # "None: not given" (decoding_request): the other name of the same option is then the one given, and errors name it.
    assert decoding_options(num_beams=None, beams=3) == decoding_options(beams=3)
    assert decoding_options(max_length=7, max_new_tokens=None).max_new_tokens == 7
    with pytest.raises(InputError) as raised:
        decoding_request(beams=2, num_beams=None, sample=True)
    assert str(raised.value) == "beams: beam sampling is not supported: sample with 1 beam (the default)"


def test_a_value_over_a_callers_limit_is_quoted_in_40_characters() -> None:
    (error,) = option_errors({"num_beams": 8}, num_beams=int("9" * 4000))
    assert str(error) == f"num_beams: must be at most 8 on this server, got {'9' * 37}..."
