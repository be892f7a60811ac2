"""What to decode: :class:`DecodingConfig` (validated when built) and :class:`Hypothesis` (one result)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from captionkit.errors import InputError

MAX_NEW_TOKENS = 1024
MAX_BEAMS = 64
MAX_RETURN_SEQUENCES = 64
MAX_SEED = 2**63 - 1
# Sampling divides the model's float32 log-probs (every family's step returns float32) by the temperature. A Python
# float below ~1e-38 becomes 0 or a denormal in float32, the division gives inf and nan, and torch.multinomial fails.
# 1e-4 keeps |log-prob| / temperature far inside float32's range (and bf16's: the same 8-bit exponent) for any
# log-prob a model gives, and is greedy decoding already: a log-prob gap of 0.01 becomes odds of e**-100.
MIN_TEMPERATURE = 1e-4
TEMPERATURE_NOTE = "a smaller temperature is greedy decoding in effect: decode without sampling"
# Scores are log_prob / length ** length_penalty for lengths up to MAX_NEW_TOKENS. Above: 1024 ** 5 (1.1e15) is far
# inside float32 (a Python power overflows from ~102, a float32 divisor from ~13). Below: past -1 a long hypothesis's
# score (log_prob * length ** -length_penalty) falls fast (a log-prob of -12,000 over 1024 tokens: -1.2e7 at -1,
# -4e8 at -1.5, -1.3e10 at -2): soon under the score of beam search's empty slots (beam.NEG, -1e9), which then
# outrank it, leaving an image with no caption.
MIN_LENGTH_PENALTY = -1.0
MAX_LENGTH_PENALTY = 5.0

EarlyStopping = bool | Literal["never"]


@dataclass(frozen=True)
class DecodingConfig:
    """Decoding settings, named and defaulted as in transformers' ``generate``.

    * greedy: ``num_beams=1, do_sample=False`` (the default);
    * beam search: ``num_beams > 1``; ``num_return_sequences`` best hypotheses per image;
    * sampling: ``do_sample=True``, ``num_return_sequences`` samples per image, warped by ``temperature``,
      ``top_k`` and ``top_p`` (in that order, as transformers does) and seeded by ``seed``.
    """

    # At most this many generated tokens per caption, the final eos included (transformers' max_new_tokens).
    max_new_tokens: int = 20
    # eos is impossible before this many generated tokens (transformers' min_new_tokens; 0: no minimum). Benchmarks
    # use it to make every caption exactly max_new_tokens long.
    min_new_tokens: int = 0
    num_beams: int = 1
    # Score = sum of log-probs / generated_length ** length_penalty; > 0 favours longer captions.
    length_penalty: float = 1.0
    # Beam search: the n best (<= num_beams). Sampling: n samples per image. Greedy: 1.
    num_return_sequences: int = 1
    # Beam search stopping rule, transformers' semantics: True stops an image once it has num_beams finished
    # hypotheses; False stops when the best running beam, scored at its current length, cannot beat the worst
    # finished one; "never" does the same with the most favourable length (exact when length_penalty >= 0).
    early_stopping: EarlyStopping = False
    do_sample: bool = False
    temperature: float = 1.0
    # 0: no top-k truncation. Sampling defaults to the plain model distribution (transformers defaults
    # top_k to 50), which is what self-critical training needs.
    top_k: int = 0
    top_p: float = 1.0
    # Image i of a call samples from torch.Generator(seed + image_offset + i); None: a seed drawn from torch's
    # global generator.
    seed: int | None = None
    # The first token fed to the decoder; None: the model's bos. A style-controlled model starts a caption with its
    # style's token (captionkit.text.styles; ``Captioner.caption(style=...)`` sets this).
    start_token_id: int | None = None
    # Tokens fed after the start token before the caption begins (BLIP's conditional prompt, e.g. "a photography
    # of"); the caption is what follows them, as in transformers' generate with input_ids.
    prompt_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        if self.start_token_id is not None:
            _check_int("start_token_id", self.start_token_id, 0, None)
        if not isinstance(self.prompt_ids, tuple):
            raise InputError("prompt_ids", f"must be a tuple of token ids, got {self.prompt_ids!r}")
        for token in self.prompt_ids:
            _check_int("prompt_ids", token, 0, None)
        _check_int("min_new_tokens", self.min_new_tokens, 0, self.max_new_tokens)
        _check_int("num_beams", self.num_beams, 1, MAX_BEAMS)
        _check_int("num_return_sequences", self.num_return_sequences, 1, MAX_RETURN_SEQUENCES)
        _check_float("length_penalty", self.length_penalty)
        _check_range("length_penalty", self.length_penalty, MIN_LENGTH_PENALTY, MAX_LENGTH_PENALTY)
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise InputError("early_stopping", f"must be true, false or 'never', got {self.early_stopping!r}")
        if not isinstance(self.do_sample, bool):
            raise InputError("do_sample", f"must be true or false, got {self.do_sample!r}")
        _check_float("temperature", self.temperature)
        _check_range("temperature", self.temperature, MIN_TEMPERATURE, None, note=TEMPERATURE_NOTE)
        _check_int("top_k", self.top_k, 0, None)
        _check_float("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise InputError("top_p", out_of_bounds(self.top_p, 0, 1, low_open=True) or "")
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        self._check_strategy()

    def _check_strategy(self) -> None:
        # The reasons name no option: the CLI (--beams, --sample), the API and the server name them differently, and
        # the option at fault is named before the reason in each front end's own words.
        if self.do_sample:
            if self.num_beams > 1:
                raise InputError("num_beams", "beam sampling is not supported: sample with 1 beam (the default)")
            return
        for name, default in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("seed", None)):
            if getattr(self, name) != default:
                raise InputError(name, f"only used when sampling; got {getattr(self, name)} without sampling")
        if self.num_return_sequences > self.num_beams:
            what = (
                "greedy decoding returns 1 caption"
                if self.num_beams == 1
                else f"beam search returns at most {self.num_beams} captions"
            )
            raise InputError(
                "num_return_sequences",
                f"{what} per image, got {self.num_return_sequences} (use more beams, or sample)",
            )

    @property
    def strategy(self) -> Literal["greedy", "beam", "sample"]:
        if self.do_sample:
            return "sample"
        return "beam" if self.num_beams > 1 else "greedy"


@dataclass(frozen=True)
class Hypothesis:
    """One decoded caption.

    ``token_ids``: generated tokens, without bos and without the final eos.
    ``score``: ``log_prob / generated_length ** length_penalty``, where ``generated_length`` counts the
    generated tokens including the final eos (= ``len(token_ids) + finished``). For beam search it equals
    transformers' ``sequences_scores``; with the default ``length_penalty=1.0`` it is the mean log-probability
    per token. Greedy and sampling use the same definition, so a 1-beam search and greedy agree exactly.
    ``log_prob``: the model's log-probability of the generated tokens, eos included. For sampling it is the
    model's own distribution (before temperature, top-k, top-p), so scores compare across settings.
    ``finished``: the caption ended with eos (False: cut at ``max_new_tokens``).
    """

    token_ids: list[int]
    score: float
    log_prob: float
    finished: bool


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    # bool is an int subclass, but `num_beams=True` is a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(name, f"must be an integer, got {value!r}")
    reason = out_of_bounds(value, low, high)
    if reason is not None:
        raise InputError(name, reason)


def out_of_bounds(
    value: float, low: float | None, high: float | None, low_open: bool = False, note: str | None = None
) -> str | None:
    """Why ``value`` is outside [low, high] (``(low, high]`` when ``low_open``; None: unbounded), in the one wording
    every front end uses, ``note`` (what the bound means) added in parentheses, or None when it is inside."""
    below = low is not None and (value <= low if low_open else value < low)
    if not below and (high is None or value <= high):
        return None
    if high is None:
        reason = f"must be {'>' if low_open else '>='} {_number(low)}, got {_number(value)}"
    else:
        reason = f"must be in {'(' if low_open else '['}{_number(low)}, {_number(high)}], got {_number(value)}"
    return f"{reason} ({note})" if note else reason


def _check_range(name: str, value: float, low: float, high: float | None, note: str | None = None) -> None:
    reason = out_of_bounds(value, low, high, note=note)
    if reason is not None:
        raise InputError(name, reason)


def _number(value: float | None) -> str:
    # A float's :g form is short (13 characters at most); an int may have thousands of digits.
    return "" if value is None else f"{value:g}" if isinstance(value, float) else shown(value)


def shown(value: object) -> str:
    """How a decoding error quotes a value: its ``repr``, cut to 40 characters."""
    try:
        text = repr(value)
    except ValueError:
        # Python prints no int of over sys.get_int_max_str_digits() digits (4300 by default): show its magnitude.
        if not isinstance(value, int):
            raise
        text = f"{Decimal(value):.6e}"
    return text if len(text) <= 40 else text[:37] + "..."


def is_finite(value: float) -> bool:
    """``math.isfinite``, but False rather than an ``OverflowError`` for an int beyond float's range."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not is_finite(value):
        raise InputError(name, f"must be a finite number, got {shown(value)}")
