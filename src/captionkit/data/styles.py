"""Training records for style control: keep the requested styles and mix them in the requested shares.

``mix_styles(records, {"neutral": 0.5, "positive": 0.25, "negative": 0.25}, seed)`` returns a list in which each
style's records make up (up to rounding) its share. No record is dropped: the list is as long as the smallest one
that holds every record of every style at those shares, and the styles that need more samples repeat their records
(whole passes in order, then a seeded choice for the remainder). The trainer samples uniformly from the list, so
the shares hold for the samples it draws.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping, Sequence

from captionkit.data.records import STYLES, CaptionRecord
from captionkit.data.splits import first_caption_per_image
from captionkit.errors import ConfigError, InputError


def named_style_shares(shares: Mapping[str, float], key: str = "data.styles") -> dict[str, float]:
    """``shares`` keyed by style names as captionkit spells them (case and spaces ignored: "Positive"); a style
    given twice so ("positive" and "Positive") is a ``ConfigError``."""
    if not isinstance(shares, Mapping):
        return shares  # type: ignore[return-value]  # check_style_shares says what is wrong with it
    named: dict[str, float] = {}
    for style, share in shares.items():
        name = style.strip().lower() if isinstance(style, str) else style
        if name in named:
            raise ConfigError(key, f"the style {name!r} is given twice")
        named[name] = share
    return named


def check_style_shares(shares: Mapping[str, float], key: str = "data.styles") -> None:
    for style, share in shares.items():
        if style not in STYLES:
            raise ConfigError(key, f"unknown style {style!r} (known: {', '.join(STYLES)})")
        # Finite too: an infinite share (YAML .inf) makes every mix length infinite, a traceback in mix_styles.
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < math.inf:
            raise ConfigError(f"{key}.{style}", f"must be a positive number, got {share!r}")


def first_caption_per_style(records: Sequence[CaptionRecord]) -> list[CaptionRecord]:
    """The first record of each (image, style): one canonical caption per style and image."""
    return first_caption_per_image(records, by_style=True)


def mix_styles(
    records: Sequence[CaptionRecord], shares: Mapping[str, float], seed: int, source: object = "data.train"
) -> list[CaptionRecord]:
    """Records of the styles in ``shares``, repeated so that each style makes up its share (see the module)."""
    check_style_shares(shares)
    by_style: dict[str, list[CaptionRecord]] = {style: [] for style in shares}
    for record in records:
        if record.style in by_style:
            by_style[record.style].append(record)
    empty = [style for style, found in by_style.items() if not found]
    if empty:
        raise InputError(source, f"no {empty[0]} captions, but data.styles asks for them")
    total_share = sum(shares.values())
    # The shortest length at which no style has to drop records.
    length = max(len(found) * total_share / shares[style] for style, found in by_style.items())
    rng = random.Random(seed)
    mixed: list[CaptionRecord] = []
    for style, found in by_style.items():
        want = max(len(found), round(length * shares[style] / total_share))
        passes, rest = divmod(want, len(found))
        mixed += list(found) * passes + rng.sample(list(found), rest)
    return mixed


def validation_styles(styles: Collection[str]) -> tuple[str, ...]:
    """The styles validation captions in, for a run trained with ``styles`` (``data.styles``' names): every one
    (neutral too), in one order however the recipe lists them; neutral alone for a run without styles."""
    if not styles:
        return ("neutral",)
    return tuple(style for style in STYLES if style in styles)
