"""Decoding options as people pass them: one table of names, aliases and captionkit's defaults.

:class:`DecodingConfig` holds the fields (named as transformers' ``generate`` names them) and checks them. This table
adds what the CLI, the Python API and the server share on top: the shorter names they accept (``max_length``,
``n_best``, ``beams``, ``sample``), captionkit's default strategy (beam search with :data:`DEFAULT_BEAMS` beams unless
sampling, which decodes one row per sample), and errors that name the option the way the caller wrote it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from captionkit.decoding.config import DecodingConfig
from captionkit.errors import InputError

__all__ = ["ALIASES", "DEFAULT_BEAMS", "decoding_options"]

DEFAULT_BEAMS = 4
# Caller's name -> DecodingConfig field.
ALIASES = {
    "max_length": "max_new_tokens",
    "n_best": "num_return_sequences",
    "beams": "num_beams",
    "sample": "do_sample",
}
_FIELDS = {field.name for field in fields(DecodingConfig)}


def decoding_options(start_token_id: int | None = None, **options: Any) -> DecodingConfig:
    """A :class:`DecodingConfig` from options named as fields or aliases, with captionkit's defaults.

    Without ``num_beams``: :data:`DEFAULT_BEAMS` beams, or 1 when sampling. An unknown name, a field given twice
    (by its name and an alias) or a bad value is an ``InputError`` naming the option as given.
    """
    given: dict[str, str] = {}  # field -> the name the caller used
    values: dict[str, Any] = {}
    for name, value in options.items():
        field = ALIASES.get(name, name)
        if field not in _FIELDS:
            known = ", ".join(sorted((_FIELDS - {"start_token_id"}) | set(ALIASES)))
            raise InputError(name, f"unknown decoding option (known: {known})")
        if field in given:
            raise InputError(name, f"given twice, as {given[field]} and as {name}")
        given[field], values[field] = name, value
    values.setdefault("num_beams", 1 if values.get("do_sample") else DEFAULT_BEAMS)
    try:
        return DecodingConfig(**values, start_token_id=start_token_id)
    except InputError as error:
        raise InputError(given.get(error.source, error.source), error.reason) from None
