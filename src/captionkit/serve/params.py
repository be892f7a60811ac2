"""Request parameters of ``POST /v1/captions``: one table of names and bounds, parsed from strings or JSON.

The same table validates query parameters, multipart form fields and JSON keys, and describes them in the
OpenAPI schema, so what the docs say is what the server checks. Each decoding option also takes the table's other
name (``beams`` for ``num_beams``), as the CLI and the Python API do. Unknown names are errors (a typo such as
``beam=8`` must not silently decode with the default).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from captionkit.decoding import DecodingConfig
from captionkit.decoding.options import BY_FIELD, decoding_request, option_errors
from captionkit.errors import InputError
from captionkit.serve.errors import field_error, invalid_fields
from captionkit.serve.models import ServedModel
from captionkit.serve.settings import ServeSettings
from captionkit.text.styles import NEUTRAL
from captionkit.wording import closest

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Parameter:
    """One request parameter: its JSON type, bounds for the OpenAPI schema (inclusive unless ``low_open``) and what
    it does. The decoding ones come from the options table (captionkit.decoding.options), which checks them."""

    name: str
    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False


# The request's names of the decoding options (DecodingConfig fields or the table's aliases) and the table's field.
_DECODING_NAMES = {
    "num_beams": "num_beams",
    "max_length": "max_new_tokens",
    "length_penalty": "length_penalty",
    "n_best": "num_return_sequences",
    "do_sample": "do_sample",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "seed": "seed",
    "style": "style",
    "prompt": "prompt",
}


# The table's other name of each (its field, or its alias: ``beams`` for ``num_beams``), taken too, as the CLI and the
# Python API take either; errors name the parameter as the request gave it.
_OTHER_NAMES = {
    other: name
    for name, field in _DECODING_NAMES.items()
    for other in (field, BY_FIELD[field].alias)
    if other is not None and other != name
}


def _limits(settings: ServeSettings) -> dict[str, float]:
    """This server's bounds, tighter than the table's, since every request shares the same machine. (The length
    penalty costs nothing to decode: its range is the table's, as on the CLI and in the Python API.)"""
    return {
        "num_beams": settings.max_beams,
        "max_length": settings.max_new_tokens,
        "n_best": settings.max_n_best,
        "temperature": 10.0,
        "top_k": 100_000,
    }


def parameters(settings: ServeSettings) -> tuple[Parameter, ...]:
    """The parameter table, with the bounds this server was started with."""
    limits = _limits(settings)
    decoding = []
    for name, field in _DECODING_NAMES.items():
        option = BY_FIELD[field]
        high = limits.get(name, option.high)
        also = [other for other, own in _OTHER_NAMES.items() if own == name]
        named = f" Also named {also[0]}." if also else ""
        text = f"{option.help} Default: {option.default}.{named}"
        decoding.append(Parameter(name, option.kind, text, option.low, high, option.low_open))
    return (
        Parameter("model", str, "Model name from GET /v1/models (default: the first one)."),
        *decoding,
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
    """Validate raw values (strings from a query or form, or JSON values); raises a 422 ``ApiError``.

    Strings become the parameter's type here; every decoding check, default and the style and prompt are the options
    table's (captionkit.decoding.options), as for the CLI and the Python API, with this server's tighter limits.
    """
    table = {p.name: p for p in parameters(settings)}
    raw, given_as, errors = _canonical_names(raw)
    errors += [field_error(name, _unknown(name, table)) for name in raw if name not in table]
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in table:
            try:
                values[name] = _convert(table[name], value)
            except ValueError as error:
                errors.append(field_error(given_as.get(name, name), str(error)))
    limits = _limits(settings)
    decoding_values = {name: value for name, value in values.items() if name in _DECODING_NAMES}
    for error in option_errors(limits, **decoding_values):
        errors.append(field_error(given_as.get(error.source, error.source), error.reason))
    if errors:
        raise invalid_fields(errors)
    model = _pick_model(values.get("model"), models)
    attention = values.get("attention", False)
    if attention and not model.attention:
        raise invalid_fields([field_error("attention", f"model {model.name!r} does not report attention maps")])
    try:
        request = decoding_request(limits, **decoding_values)
        decoding = model.captioner.resolve_decoding(request, f"model {model.name!r}")
    except InputError as error:
        raise invalid_fields([field_error(error.source, error.reason)]) from None
    return CaptionParams(model, decoding, request.style or NEUTRAL, attention)


def _canonical_names(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[dict[str, Any]]]:
    """``raw`` with each option's other name (``beams``, ``max_new_tokens``, ``sample``, ...) as the server's own;
    the names so replaced (server's -> given); and an error for an option given under both names."""
    renamed: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    errors = []
    for name, value in raw.items():
        own = _OTHER_NAMES.get(name, name)
        if own in renamed:
            first = given_as.get(own, own)
            errors.append(field_error(name, f"the same parameter as {first}: give one of them"))
            continue
        renamed[own] = value
        if own != name:
            given_as[own] = name
    return renamed, given_as, errors


def _unknown(name: str, table: dict[str, Parameter]) -> str:
    """Why ``name`` is refused, with the parameter it likely means: the CLI's spelling (``n-best``, ``--top-k``,
    ``Beams``) or a near miss (``beam``, ``temprature``)."""
    names = [*table, *_OTHER_NAMES]
    spelled = name.strip().lstrip("-").replace("-", "_").lower()
    likely = closest(spelled, names)
    meant = f"; did you mean {likely}?" if likely else ""
    return f"unknown parameter{meant} (known: {', '.join(table)})"


def _pick_model(name: str | None, models: dict[str, ServedModel]) -> ServedModel:
    if name is None:
        return next(iter(models.values()))
    if name not in models:
        raise invalid_fields([field_error("model", f"unknown model {name!r} (served: {', '.join(models)})")])
    return models[name]


def _convert(parameter: Parameter, value: Any) -> Any:
    """``value`` (a string from a query or form, or a JSON value) as the parameter's type; raises ``ValueError`` with
    the reason. Bounds are the options table's to check."""
    if parameter.kind is bool:
        return _to_bool(value)
    if parameter.kind is str:
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise ValueError(f"must be a non-empty string of at most 200 characters, got {_show(value)}")
        return value.strip()
    return _to_int(value) if parameter.kind is int else _to_float(value)


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


def _show(value: Any) -> str:
    """``value`` as the client wrote it: JSON's null, true, false, lists and objects in JSON's words (Python would
    say None and True), a text in quotes; cut to 40 characters."""
    json_only = value is None or isinstance(value, bool | list | dict)
    text = json.dumps(value, ensure_ascii=False) if json_only else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
