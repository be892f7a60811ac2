"""Request parameters of ``POST /v1/captions``: one table of names and bounds, parsed from strings or JSON.

The same table validates query parameters, multipart form fields and JSON keys, and describes them in the
OpenAPI schema, so what the docs say is what the server checks. Unknown names are errors (a typo such as
``beams=8`` must not silently decode with the default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from captionkit.decoding import DecodingConfig, check_length
from captionkit.decoding.config import MAX_SEED
from captionkit.errors import InputError
from captionkit.serve.errors import field_error, invalid_fields
from captionkit.serve.models import ServedModel
from captionkit.serve.settings import ServeSettings
from captionkit.text.styles import NEUTRAL

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Parameter:
    """One request parameter: its JSON type, bounds (inclusive unless ``low_open``) and what it does."""

    name: str
    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False


def parameters(settings: ServeSettings) -> tuple[Parameter, ...]:
    """The parameter table, with the bounds this server was started with."""
    return (
        Parameter("model", str, "Model name from GET /v1/models (default: the first one)."),
        Parameter("num_beams", int, "Beam width; 1 = greedy (default 4, or 1 when sampling).", 1, settings.max_beams),
        Parameter("max_length", int, "At most this many generated tokens (default 20).", 1, settings.max_new_tokens),
        Parameter("length_penalty", float, "Beam score = log-prob / length ** this (default 1).", -5.0, 5.0),
        Parameter("n_best", int, "Captions per image: <= num_beams, or samples (default 1).", 1, settings.max_n_best),
        Parameter("do_sample", bool, "Sample instead of beam/greedy search (default false)."),
        Parameter("temperature", float, "Sampling temperature (default 1).", 0.0, 10.0, low_open=True),
        Parameter("top_k", int, "Sample from the k most likely tokens; 0 = all (default 0).", 0, 100_000),
        Parameter("top_p", float, "Nucleus sampling mass (default 1).", 0.0, 1.0, low_open=True),
        Parameter("seed", int, "Seed for sampling: the same request gives the same captions.", 0, MAX_SEED),
        Parameter("style", str, "Caption style: 'neutral' (the default) or another the model lists in /v1/models."),
        Parameter(
            "attention",
            bool,
            "Add each caption's attention maps: per token {token, grid}, the (h, w) weights over the image"
            " (3 decimals). Only models that report attention.",
        ),
    )


@dataclass(frozen=True)
class CaptionParams:
    model: ServedModel
    decoding: DecodingConfig
    style: str
    attention: bool


def parse_params(raw: dict[str, Any], models: dict[str, ServedModel], settings: ServeSettings) -> CaptionParams:
    """Validate raw values (strings from a query or form, or JSON values); raises a 422 ``ApiError``."""
    table = {p.name: p for p in parameters(settings)}
    errors = [field_error(name, f"unknown parameter (known: {', '.join(table)})") for name in raw if name not in table]
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in table:
            try:
                values[name] = _convert(table[name], value)
            except ValueError as error:
                errors.append(field_error(name, str(error)))
    if errors:
        raise invalid_fields(errors)
    model = _pick_model(values.get("model"), models)
    style = values.get("style", NEUTRAL)
    attention = values.get("attention", False)
    if style not in model.styles:
        allowed = ", ".join(model.styles)
        errors.append(field_error("style", f"model {model.name!r} has no style {style!r} (allowed: {allowed})"))
    if attention and not model.attention:
        errors.append(field_error("attention", f"model {model.name!r} does not report attention maps"))
    if errors:
        raise invalid_fields(errors)
    start = model.captioner.style_start_token(style)
    decoding = _decoding(values, start)
    try:
        check_length(model.captioner.model, decoding)
    except InputError as error:
        raise invalid_fields([field_error("max_length", f"model {model.name!r}: {error.reason}")]) from None
    return CaptionParams(model, decoding, style, attention)


def _pick_model(name: str | None, models: dict[str, ServedModel]) -> ServedModel:
    if name is None:
        return next(iter(models.values()))
    if name not in models:
        raise invalid_fields([field_error("model", f"unknown model {name!r} (served: {', '.join(models)})")])
    return models[name]


def _decoding(values: dict[str, Any], start_token_id: int | None) -> DecodingConfig:
    sample = values.get("do_sample", False)
    try:
        return DecodingConfig(
            max_new_tokens=values.get("max_length", 20),
            num_beams=values.get("num_beams", 1 if sample else 4),
            length_penalty=values.get("length_penalty", 1.0),
            num_return_sequences=values.get("n_best", 1),
            do_sample=sample,
            temperature=values.get("temperature", 1.0),
            top_k=values.get("top_k", 0),
            top_p=values.get("top_p", 1.0),
            seed=values.get("seed"),
            start_token_id=start_token_id,
        )
    except InputError as error:
        field = {"max_new_tokens": "max_length", "num_return_sequences": "n_best"}.get(error.source, error.source)
        raise invalid_fields([field_error(field, error.reason)]) from None


def _convert(parameter: Parameter, value: Any) -> Any:
    """``value`` as the parameter's type, within bounds; raises ``ValueError`` with the reason."""
    if parameter.kind is bool:
        return _to_bool(value)
    if parameter.kind is str:
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise ValueError(f"must be a non-empty string of at most 200 characters, got {_show(value)}")
        return value.strip()
    number = _to_int(value) if parameter.kind is int else _to_float(value)
    low, high = parameter.low, parameter.high
    below = low is not None and (number <= low if parameter.low_open else number < low)
    if below or (high is not None and number > high):
        opening = "(" if parameter.low_open else "["
        raise ValueError(f"must be in {opening}{_num(low)}, {_num(high)}], got {_num(number)}")
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"must be true or false, got {_show(value)}")


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value) < 40:
        return int(value)
    raise ValueError(f"must be an integer, got {_show(value)}")


def _to_float(value: Any) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float's range (JSON allows 4300 digits)
            number = None
    elif isinstance(value, str) and len(value) < 40:
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {_show(value)}")
    return number


def _num(value: float | None) -> str:
    text = "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
