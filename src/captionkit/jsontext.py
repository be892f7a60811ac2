"""Parsing JSON that a user gave (a file, a request body): every way it can fail is one :class:`InputError`.

``json.loads`` alone answers hostile input with errors that are not ``JSONDecodeError``: ``RecursionError`` for
deep nesting, ``ValueError`` for an integer of more than ``sys.get_int_max_str_digits()`` digits; and it accepts
what JSON does not (``NaN``, ``Infinity``, ``1e999`` read as infinity). :func:`parse_json` refuses all of these
with a reason a user can act on, and also refuses documents nested deeper than :data:`MAX_DEPTH`, which no
captionkit input needs and which later ``repr`` or recursion could choke on.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from captionkit.errors import InputError

#: Deepest nesting of arrays and objects accepted (COCO and Karpathy files need 4).
MAX_DEPTH = 64


class _Refused(ValueError):
    """Raised inside the parser's hooks; its message is the reason given to the user."""


def parse_json(
    text: str,
    source: object,
    *,
    unique_keys: bool = False,
    non_finite: bool = False,
    error: type[InputError] = InputError,
) -> Any:
    """``text`` as JSON; ``error(source, "invalid JSON: <reason>")`` for anything malformed or hostile.

    ``unique_keys``: refuse an object that names a key twice (``json.loads`` silently keeps the last one).
    ``non_finite``: accept ``NaN`` and ``Infinity`` as ``json.dumps`` writes them, for files captionkit wrote
    itself (a diverged loss, a score of minus infinity); depth and digit limits still hold.
    """
    try:
        document = json.loads(
            text,
            parse_constant=None if non_finite else _refuse_constant,
            parse_float=float if non_finite else _finite_float,
            object_pairs_hook=_unique_object if unique_keys else None,
        )
    except json.JSONDecodeError as decode_error:
        column = f"column {decode_error.colno}"
        where = f"line {decode_error.lineno}, {column}" if "\n" in text else column
        raise error(source, f"invalid JSON: {decode_error.msg} ({where})") from None
    except RecursionError:
        raise error(source, f"invalid JSON: nested more than {MAX_DEPTH} levels deep") from None
    except _Refused as refused:
        raise error(source, f"invalid JSON: {refused}") from None
    except ValueError:  # int() over the digit limit: the only other ValueError the C parser lets through
        raise error(source, f"invalid JSON: a number longer than {sys.get_int_max_str_digits()} digits") from None
    if _deeper_than(document, MAX_DEPTH):
        raise error(source, f"invalid JSON: nested more than {MAX_DEPTH} levels deep")
    return document


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether arrays/objects nest more than ``limit`` levels.

    One level at a time, so any depth the parser built is safe; comprehensions over the exact types ``json.loads``
    builds make it about three times faster than a stack walk (it runs on every file ``captionkit score`` reads).
    """
    level = [document]
    for _ in range(limit):
        children = [child for value in level if type(value) is dict for child in value.values()]
        children += [child for value in level if type(value) is list for child in value]
        level = [child for child in children if type(child) is dict or type(child) is list]
        if not level:
            return False
    return True
