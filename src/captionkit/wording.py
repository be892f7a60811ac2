"""How messages word things, one way in every layer: a count with its noun, and the known name that a mistyped one
likely means. The standard library only, so that the lowest layers (``config``) and the command line (without
torch at start-up) can both import it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping


def plural(count: int | str, noun: str) -> str:
    """``plural(1, "image")`` -> "1 image", ``plural(1200, "image")`` -> "1,200 images". A count given as text is
    written as it is (``plural("0.5", "epoch")`` -> "0.5 epochs"); the noun is singular when the count reads "1"."""
    written = f"{count:,}" if isinstance(count, int) else count
    return f"{written} {noun}" if written == "1" else f"{written} {noun}s"


def tally(counts: Mapping[str, int]) -> str:
    """``tally({"empty caption": 2, "row without image bytes": 1})`` -> "2 x empty caption, 1 x row without image
    bytes": each reason (a noun phrase in the singular: "2 empty caption" reads wrong) after its count, in the
    mapping's order."""
    return ", ".join(f"{count:,} x {reason}" for reason, count in counts.items())


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name that ``name`` most likely means, for a "did you mean" hint: ``name`` itself when it is known,
    else difflib's closest match at a similarity of 0.6 or more; None when no name is that close."""
    return next(iter(difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)), None)
