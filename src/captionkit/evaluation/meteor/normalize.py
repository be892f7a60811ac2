"""METEOR's ``-norm``: punctuation split off and normalised, then lowercased, as the jar does it.

Observed on the jar: curly and doubled quotes become ``"`` and ``'``; symbols are split off; a hyphen between two
letters or digits becomes a space and ``--`` becomes ``-``; commas split off unless between digits; English
apostrophes split as ``it 's``, ``n 't``, ``' s``; a final period is split off unless the word is a nonbreaking
prefix (case-sensitive, from the jar's ``english.prefixes``), an abbreviation with periods inside, or followed by a
lowercase word; acronyms such as ``U.S.A.`` lose their periods.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'", "`": "'"})
_SYMBOL = re.compile(r"([^\w\s.',\-]|_)")
_INNER_HYPHEN = re.compile(r"([^\W_])-+([^\W_])")
_DASHES = re.compile(r"-{2,}")
_COMMA = re.compile(r"(?<!\d),|,(?!\d)")
_DOTS = re.compile(r"\.{2,}")
_LETTER = r"[^\W\d_]"
_APOSTROPHES = (
    (re.compile(rf"(?<!{_LETTER})'(?!{_LETTER})"), " ' "),
    (re.compile(rf"(?<![^\W_])'(?={_LETTER})"), " ' "),
    (re.compile(rf"(?<={_LETTER})'(?!{_LETTER})"), " ' "),
    (re.compile(rf"({_LETTER})'({_LETTER})"), r"\1 '\2"),
)
_ACRONYM = re.compile(rf"(?:{_LETTER}\.){{2,}}")
_LOWER_START = re.compile(r"[^\W\d_]")
_PLAIN = re.compile(r"[a-z0-9 ]*")  # nothing to split off or lowercase, as in PTB-tokenized captions


def normalize(text: str, prefixes: Mapping[str, int]) -> list[str]:
    """The jar's ``-norm`` tokens of one line. ``prefixes``: nonbreaking prefix -> 1 (always) or 2 (before digits)."""
    if _PLAIN.fullmatch(text):
        return text.split()
    text = " ".join(text.translate(_QUOTES).replace("''", '"').split())
    text = _SYMBOL.sub(r" \1 ", text)
    text = _DASHES.sub("-", _INNER_HYPHEN.sub(r"\1 \2", text))
    text = _COMMA.sub(" , ", text)
    text = _DOTS.sub(r" \g<0> ", text)
    text = f" {text} "
    for pattern, replacement in _APOSTROPHES:
        text = pattern.sub(replacement, text)
    words = text.split()
    out: list[str] = []
    for k, word in enumerate(words):
        following = words[k + 1] if k + 1 < len(words) else ""
        out.extend(_final_period(word, following, prefixes))
    return [w.lower() for w in out]


def _final_period(word: str, following: str, prefixes: Mapping[str, int]) -> list[str]:
    if len(word) < 2 or not word.endswith(".") or word.endswith(".."):
        return [word]
    if _ACRONYM.fullmatch(word):
        return [word.replace(".", "")]
    stem = word[:-1]
    keep = (
        ("." in stem and any(c.isalpha() for c in stem))
        or prefixes.get(stem) == 1
        or (following[:1].islower() and _LOWER_START.match(following) is not None)
        or (prefixes.get(stem) == 2 and following[:1].isdigit())
    )
    return [word] if keep else [stem, "."]
