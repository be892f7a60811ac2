"""Decoding options as people pass them: ONE table of names, aliases, defaults, checks and help, shared by the CLI,
the Python API and the server.

:class:`DecodingConfig` holds the fields (named as transformers' ``generate`` names them) and checks them once more
when built. This table adds what the three front ends share on top:

* the shorter names they accept (``max_length``, ``n_best``, ``beams``, ``sample``);
* captionkit's defaults, written once: beam search with :data:`DEFAULT_BEAMS` beams unless sampling (which decodes
  one row per sample), at most 20 new tokens;
* the checks, with one wording whatever the front end (``must be in [1, 64], got 0``), and a caller's tighter
  limits (the server's) checked after them;
* style and prompt resolution against a model: :func:`resolve_decoding`.

A front end passes only what its user gave (the CLI's flags default to None), so every default comes from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from captionkit.decoding.config import (
    MAX_BEAMS,
    MAX_LENGTH_PENALTY,
    MAX_NEW_TOKENS,
    MAX_RETURN_SEQUENCES,
    MAX_SEED,
    MIN_LENGTH_PENALTY,
    MIN_TEMPERATURE,
    TEMPERATURE_NOTE,
    DecodingConfig,
    is_finite,
    out_of_bounds,
    shown,
)
from captionkit.errors import InputError

if TYPE_CHECKING:
    from captionkit.models.base import CaptionModel
    from captionkit.text import CaptionTokenizer

__all__ = [
    "ALIASES",
    "DEFAULT_BEAMS",
    "OPTIONS",
    "DecodingOption",
    "DecodingRequest",
    "decoding_options",
    "decoding_request",
    "option_errors",
    "resolve_decoding",
]

DEFAULT_BEAMS = 4
DEFAULT_MAX_LENGTH = 20


@dataclass(frozen=True)
class DecodingOption:
    """One option: its :class:`DecodingConfig` field (None: resolved against the model), its short alias, its JSON
    type, bounds (inclusive unless ``low_open``; None: unbounded), its default as shown, what it does, and what its
    bounds mean (``note``, added to an out-of-bounds error)."""

    field: str
    alias: str | None
    kind: type
    help: str
    default: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    note: str | None = None

    @property
    def cli_flag(self) -> str:
        return "--" + (self.alias or self.field).replace("_", "-")


OPTIONS: tuple[DecodingOption, ...] = (
    DecodingOption("max_new_tokens", "max_length", int, "At most this many generated tokens.", "20", 1, MAX_NEW_TOKENS),
    DecodingOption(
        "num_beams", "beams", int, "Beam width; 1 = greedy.", f"{DEFAULT_BEAMS}, or 1 when sampling", 1, MAX_BEAMS
    ),
    # Bounded so that scores stay finite and above beam search's placeholders (see decoding.config).
    DecodingOption(
        "length_penalty",
        None,
        float,
        f"Beam score = log-prob / length ** this, in [{MIN_LENGTH_PENALTY:g}, {MAX_LENGTH_PENALTY:g}].",
        "1",
        MIN_LENGTH_PENALTY,
        MAX_LENGTH_PENALTY,
    ),
    DecodingOption(
        "num_return_sequences", "n_best", int, "Captions per image: <= beams, or samples.", "1", 1, MAX_RETURN_SEQUENCES
    ),
    DecodingOption("do_sample", "sample", bool, "Sample instead of beam/greedy search.", "false"),
    # Bounded below so that float32 log-probs / temperature stay finite (see decoding.config).
    DecodingOption(
        "temperature",
        None,
        float,
        f"Sampling temperature, at least {MIN_TEMPERATURE:g}.",
        "1",
        MIN_TEMPERATURE,
        None,
        note=TEMPERATURE_NOTE,
    ),
    DecodingOption("top_k", None, int, "Sample from the k most likely tokens; 0 = all.", "0", 0),
    DecodingOption("top_p", None, float, "Nucleus sampling mass.", "1", 0.0, 1.0, low_open=True),
    DecodingOption(
        "seed", None, int, "Seed for sampling: the same request gives the same captions.", "random", 0, MAX_SEED
    ),
    DecodingOption(
        "style", None, str, "Caption style: neutral, or positive/negative for a style model (any case).", "neutral"
    ),
    DecodingOption(
        "prompt", None, str, "Text the caption continues (BLIP's conditional captioning, e.g. 'a photo of').", "none"
    ),
)
BY_FIELD = {option.field: option for option in OPTIONS}
# Caller's name -> DecodingConfig field (or "style"/"prompt").
ALIASES = {option.alias: option.field for option in OPTIONS if option.alias}
_CONFIG_FIELDS = {field.name for field in fields(DecodingConfig)} - {"start_token_id", "prompt_ids"}
_KNOWN = _CONFIG_FIELDS | {"style", "prompt"}


@dataclass(frozen=True)
class DecodingRequest:
    """Options checked before a model is known: the config (no style or prompt yet), the style and the prompt, and
    how the caller names each option in errors (field -> name, e.g. ``--max-length`` on the CLI)."""

    config: DecodingConfig
    style: str | None = None
    prompt: str | None = None
    names: dict[str, str] = field(default_factory=dict)

    def name(self, field: str) -> str:
        return self.names.get(field, field)


def option_errors(
    limits: dict[str, float] | None = None, naming: Callable[[str], str] = str, **options: Any
) -> list[InputError]:
    """Every error of one option on its own (an unknown name, a field given twice, a bad value, a value over a
    caller's limit), each naming the option as given through ``naming``: a server lists them all at once. A None
    value is an option not given (``num_beams=None, beams=3`` gives it once)."""
    errors: list[InputError] = []
    seen: dict[str, str] = {}
    for name, value in options.items():
        field = ALIASES.get(name, name)
        if field not in _KNOWN:
            errors.append(
                InputError(naming(name), f"unknown decoding option (known: {', '.join(sorted(_KNOWN | set(ALIASES)))})")
            )
            continue
        if value is None:
            continue
        if field in seen:
            errors.append(InputError(naming(name), f"given twice, as {seen[field]} and as {naming(name)}"))
            continue
        seen[field] = naming(name)
        option = BY_FIELD.get(field)
        most = (limits or {}).get(name, (limits or {}).get(field))
        reason = _value_error(option, value, most) if option is not None else None
        if reason is not None:
            errors.append(InputError(naming(name), reason))
    return errors


def _value_error(option: DecodingOption, value: Any, most: float | None) -> str | None:
    """Why ``value`` cannot be ``option``'s: its type first, then a caller's tighter upper bound ``most`` (so 99
    beams on a server of 8 hears of the 8, not of the table's 64), then the table's bounds."""
    kind = check_value(replace(option, low=None, high=None), value)
    if kind is not None:
        return kind
    if most is not None and value > most:
        return f"must be at most {most:g} on this server, got {shown(value)}"
    return check_value(option, value)


def decoding_request(
    limits: dict[str, float] | None = None, naming: Callable[[str], str] = str, **options: Any
) -> DecodingRequest:
    """Options named as fields or aliases (None: not given) -> a checked :class:`DecodingRequest` with captionkit's
    defaults. ``limits`` (field or alias -> most allowed) are a caller's tighter upper bounds, checked after the
    table's. An unknown name, a field given twice or a bad value is an ``InputError`` naming the option as given,
    through ``naming`` (the CLI's: ``beams`` -> ``--beams``)."""
    from captionkit.text.styles import NEUTRAL, STYLES, style_name

    errors = option_errors(limits, naming, **options)
    if errors:
        raise errors[0]
    # field -> the name the caller used; a name given None (not given) yields to the other name of its field.
    names = {
        ALIASES.get(name, name): naming(name) for name in sorted(options, key=lambda name: options[name] is not None)
    }
    values = {ALIASES.get(name, name): value for name, value in options.items() if value is not None}
    style, prompt = values.pop("style", None), values.pop("prompt", None)
    if style is not None:
        if style_name(style) not in STYLES:
            raise InputError(names["style"], f"unknown style {style!r} (known: {', '.join(STYLES)})")
        style = style_name(style)
    values.setdefault("num_beams", 1 if values.get("do_sample") else DEFAULT_BEAMS)
    _defaults_within(values, options, limits or {})
    try:
        config = DecodingConfig(**values)
    except InputError as error:
        raise InputError(names.get(error.source, error.source), error.reason) from None
    return DecodingRequest(config, None if style == NEUTRAL else style, prompt, names)


def _defaults_within(values: dict[str, Any], given: dict[str, Any], limits: dict[str, float]) -> None:
    """Lower the default beams and length to a caller's tighter bounds (a server started with ``--max-beams 2``):
    a request that names neither would otherwise get more than the server allows. Given values were checked."""
    bounds = {ALIASES.get(name, name): most for name, most in limits.items()}
    named = {ALIASES.get(name, name) for name, value in given.items() if value is not None}
    defaults = {"num_beams": values["num_beams"], "max_new_tokens": DEFAULT_MAX_LENGTH}
    for field_name, default in defaults.items():
        if field_name not in named and field_name in bounds and bounds[field_name] < default:
            values[field_name] = int(bounds[field_name])


def check_value(option: DecodingOption, value: Any) -> str | None:
    """Why ``value`` is not a good value of ``option`` (the one wording of every front end), or None."""
    if option.kind is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {shown(value)}"
    if option.kind is str:
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            return f"must be a non-empty string of at most 200 characters, got {shown(value)}"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be {'an integer' if option.kind is int else 'a finite number'}, got {shown(value)}"
    if option.kind is int and not isinstance(value, int):
        return f"must be an integer, got {shown(value)}"
    if option.kind is float and not is_finite(value):  # nan, inf, or an int beyond float's range
        return f"must be a finite number, got {shown(value)}"
    return out_of_bounds(value, option.low, option.high, option.low_open, option.note)


def resolve_decoding(
    request: DecodingRequest, model: CaptionModel, tokenizer: CaptionTokenizer, model_name: str = "this model"
) -> DecodingConfig:
    """``request``'s config for ``model``: the style's start token, the prompt's tokens (a family that takes no
    prompt is an ``InputError``), and the length checked against the model's positions."""
    from captionkit.decoding.engine import check_length

    config = request.config
    try:
        if request.style is not None:
            config = replace(config, start_token_id=_style_start(model, tokenizer, request.style, model_name))
        if request.prompt is not None:
            if not getattr(model, "takes_prompt", False):
                family = getattr(model, "family", type(model).__name__)
                raise InputError("prompt", f"{model_name} is a {family} model: it takes no text prompt (blip does)")
            config = replace(config, prompt_ids=tuple(tokenizer.encode(request.prompt)))
        check_length(model, config)
    except InputError as error:
        raise InputError(request.name(error.source), error.reason) from None
    return config


def _style_start(model: CaptionModel, tokenizer: CaptionTokenizer, style: str, model_name: str) -> int:
    """``style``'s start token, which the model's weights must have a row for: a token added to a checkpoint's
    tokenizer alone would otherwise fail at the first decoding step, naming no style."""
    from captionkit.text.styles import STYLE_TOKENS, start_token_id, style_name

    start = start_token_id(tokenizer, style, model_name)
    rows = getattr(model, "vocab_size", None)
    if isinstance(rows, int) and start >= rows:
        raise InputError(
            "style",
            f"{model_name}'s tokenizer has {STYLE_TOKENS[style_name(style)]} (id {start}) but its weights have "
            f"{rows} token rows: its tokenizer and weights do not match",
        )
    return start


def decoding_options(start_token_id: int | None = None, **options: Any) -> DecodingConfig:
    """A :class:`DecodingConfig` from options named as fields or aliases, with captionkit's defaults (no style or
    prompt: those need a model, :func:`resolve_decoding`). ``prompt_ids`` passes through as token ids."""
    prompt_ids = options.pop("prompt_ids", ())
    config = decoding_request(**options).config
    return replace(config, start_token_id=start_token_id, prompt_ids=tuple(prompt_ids))
