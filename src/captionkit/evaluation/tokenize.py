"""PTB tokenization exactly as pycocoevalcap applies it, in pure Python.

pycocoevalcap's ``PTBTokenizer`` writes all captions, one a line (``\\n`` inside a caption replaced by a space), to a
file and runs Stanford CoreNLP 3.4.1's ``edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` on it
in Java. The lexer's defaults in that version: parentheses become ``-LRB-``/``-RRB-``, brackets ``-LSB-``/``-RSB-``,
braces ``-LCB-``/``-RCB-``; quotes become LaTeX quotes (`` `` `` ``''`` `` ` `` ``'``); ``...`` and ``…`` become
``...``; en/em dashes and ``---`` become ``--``; ``&amp;`` becomes ``&``; ``½`` becomes ``1/2``; ``£`` ``#``, ``€``
``$``, ``¢`` ``cents``; spaces inside a token (``2 1/2``, phone numbers) become U+00A0; clitics are split off
(``do n't``, ``it 's``, ``we 're``); ``cannot``, ``gonna``, ``gotta``, ``wanna``, ``lemme``, ``gimme``, ``'tis`` and
``'twas`` are split (``can not``, ``gon na``); abbreviations keep their period (``st.``, ``mr.``, ``etc.``, ``a.``,
``u.s.``), other final periods become a separate ``.`` token; characters it does not know (emoji) are deleted.
Tokens are then lower-cased (Java, ``Locale.ENGLISH``) and pycocoevalcap drops the tokens in :data:`PUNCTUATION`.
Note that the lower-casing happens first, so ``-lrb-``/``-rrb-`` survive: pycocoevalcap's list has only the upper-case
forms.

This module reproduces that pipeline: a longest-match lexer over the same token classes (names below follow the
JFlex macros of ``PTBLexer.flex``; the rules of the 3.4.1 release were pinned down by running its jar), plus a fast
path for the plain captions that make up most real data. It was checked against the Java tokenizer on every caption of
COCO val2017, Flickr8k and SentiCap (``tests/test_evaluation_tokenize.py``).

Context across captions: pycocoevalcap tokenizes all captions as one text, and one rule looks past the end of a line:
a single-letter abbreviation ending a caption (``"... the letter B."``) loses its period when the *next* caption
starts with one of a few capitalised words (``"A"``, ``"The"``, ...). :func:`tokenize_captions` takes the captions in
pycocoevalcap's order and reproduces that; :func:`tokenize` treats its caption as the last line of a file.

Deliberate difference: the Java lexer also breaks lines at ``\\r``, U+2028, U+2029, U+000B and U+000C, which makes
pycocoevalcap pair every later caption with the wrong tokens (SentiCap has captions with ``\\r\\n``); here those
characters are spaces, as pycocoevalcap intends.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, cached_property
from itertools import compress, count

from captionkit.errors import InputError
from captionkit.evaluation.lines import line_numbers, occurrences

__all__ = ["PUNCTUATION", "ptb_tokens", "tokenize", "tokenize_captions"]

#: Tokens pycocoevalcap removes after PTB tokenization (``pycocoevalcap/tokenizer/ptbtokenizer.py``).
PUNCTUATION: frozenset[str] = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Line breaks for the Java lexer (NEWLINE macro); we read them as spaces (see the module docstring).
_LINE_BREAKS = str.maketrans({"\r": " ", "\u2028": " ", "\u2029": " ", "\x0b": " ", "\x0c": " "})


# ---------------------------------------------------------------------------------------------------------------
# Fast path: captions made only of ASCII words, spaces and single punctuation marks (after a word or alone) tokenize
# to their lower-cased words, unless a word before a period may be an abbreviation or a word is an assimilation
# (``gonna``). A few passes over all captions at C speed find the lines that need the full lexer.
def _words(text: str) -> list[str]:
    """A word list written as one string."""
    return text.split()


_ASSIMILATED = _words("cannot gonna gotta lemme gimme wanna")
# Every word that some PTB rule can keep together with a following period; a superset is safe here (such captions
# take the exact path). Single letters are included by the pattern below.
_ABBREVIATION_WORDS = _words(
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri ala ariz az ark calif "
    "colo conn ct dak del fla ga ill ind kan kans ky la mass md mich minn miss mo mont neb nev okla ore pa "
    "penn tenn tex va vt wash wis wisc wyo inc co cos corp pty ptys pte ptes ppty pptys ppte pptes ltd plc "
    "rt bancorp bhd assn univ intl sys tel est ext sq jr sr bros esq etc al seq bldg mr mrs ms mx drs dr "
    "prof profs sen sens rep reps atty attys lt col gen messrs gov govs adm rev maj sgt cpl pvt capt st ste "
    "ave pres lieut hon brig cmdr comdr pfc spc supt supts det mt ft adj adv asst assoc ens insp mlle mme "
    "msgr sfc vs alex wm jos cie cf treas ph invt elec natl mfg mtg dept blvd rd ca fig figs prop no nos "
    "art pp op so"
)
# The bytes a fast-path caption is made of (UTF-8: any other character has bytes outside this set) ...
_PLAIN_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz .,;:!?\t"
# ... and punctuation glued to what follows ("a.b", "?!", "etc.,"), found as "." followed by anything but a space
# once every mark reads "." and a tab a space: a literal first byte, which the regex engine finds at memchr speed.
_MARKS_AS_PERIODS = bytes.maketrans(b",;:!?\t", b"..... ")
_GLUED_PERIOD = re.compile(rb"\.[^ \n]")
# Searched in the reversed text so that the regex engine scans for a literal period first: "x." and "st." reversed.
_REVERSED_WORD_PERIOD = re.compile("\\.([a-z]{1,7})(?![a-z])")
_ABBREVIATIONS_REVERSED = frozenset(w[::-1] for w in _ABBREVIATION_WORDS)


def _lines_needing_lexer(text: str, lowered: str) -> set[int]:
    """The numbers of the lines of ``text`` (captions joined by newlines; ``lowered`` is it with A-Z lower-cased)
    that the fast path cannot tokenize. Each pass runs at C speed; Python sees only the (few) lines it finds."""
    data = text.encode()  # a newline is the byte 0x0A, and no other character's UTF-8 holds it
    # Characters other than ASCII letters, spaces and single marks: each line's, with the others deleted.
    odd = data.translate(None, _PLAIN_BYTES).split(b"\n")
    lines = set(compress(count(), odd))
    glued = [m.start() for m in _GLUED_PERIOD.finditer(data.translate(_MARKS_AS_PERIODS))]
    lines.update(line_numbers(data, glued))
    # Words before a period, read backwards; then the positions of the few that may be abbreviations.
    reversed_lower = lowered[::-1]
    words = set(_REVERSED_WORD_PERIOD.findall(reversed_lower))
    suspects = {w for w in words if len(w) == 1} | (words & _ABBREVIATIONS_REVERSED)
    offsets: list[int] = []
    if suspects:
        pattern = re.compile(f"\\.(?:{'|'.join(suspects)})(?![a-z])")
        last = len(text) - 1
        offsets.extend(last - m.start() for m in pattern.finditer(reversed_lower))
    for word in _ASSIMILATED:  # anywhere, even inside a longer word: a line too many only takes the exact path
        offsets.extend(occurrences(lowered, word))
    lines.update(line_numbers(text, offsets))
    return lines


# Lower-case A-Z: the text keeps its length, so offsets in it still name lines ...
_ASCII_LOWER = str.maketrans({chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)})
# ... and for the captions the fast path tokenizes, also delete . , ; : ! ? (each alone is in PUNCTUATION, and in
# those captions each follows a word or stands alone) and read tabs as spaces.
_FAST_TABLE = str.maketrans(
    {**{chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)}, **dict.fromkeys(".,;:!?"), "\t": " "}
)


# ---------------------------------------------------------------------------------------------------------------
# The full lexer. Character classes first: JFlex's [:letter:] / [:digit:] over the Basic Multilingual Plane (the
# lexer reads UTF-16 units, so characters beyond it, such as emoji, match nothing and are deleted).


def _ranges(predicate: Callable[[str], bool]) -> str:
    """A regex character-class body (no brackets) of the BMP characters for which ``predicate`` holds."""
    parts: list[str] = []
    start = None
    for code in range(0x10000 + 1):
        inside = code < 0x10000 and not 0xD800 <= code <= 0xDFFF and predicate(chr(code))
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            end = code - 1
            parts.append(f"\\u{start:04x}" if start == end else f"\\u{start:04x}-\\u{end:04x}")
            start = None
    return "".join(parts)


# Marks and modifier letters the lexer accepts inside words in addition to [:letter:] (LETTER macro).
_EXTRA_LETTERS = (
    "\\u00ad\\u0237-\\u024f\\u02c2-\\u02c5\\u02d2-\\u02df\\u02e5-\\u02ff\\u0300-\\u036f\\u0370-\\u037d\\u0384"
    "\\u0385\\u03cf\\u03f6\\u03fc-\\u03ff\\u0483-\\u0487\\u04cf\\u04f6-\\u04ff\\u0510-\\u0525\\u055a-\\u055f"
    "\\u0591-\\u05bd\\u05bf\\u05c1\\u05c2\\u05c4\\u05c5\\u05c7\\u0615-\\u061a\\u063b-\\u063f\\u064b-\\u065e\\u0670"
    "\\u06d6-\\u06ef\\u06fa-\\u06ff\\u070f\\u0711\\u0730-\\u074f\\u0750-\\u077f\\u07a6-\\u07b1\\u07ca-\\u07f5"
    "\\u07fa\\u0900-\\u0903\\u093c\\u093e-\\u094e\\u0951-\\u0955\\u0962-\\u0963\\u0981-\\u0983\\u09bc-\\u09c4"
    "\\u09c7\\u09c8\\u09cb-\\u09cd\\u09d7\\u09e2\\u09e3\\u0a01-\\u0a03\\u0a3c\\u0a3e-\\u0a4f\\u0a81-\\u0a83"
    "\\u0abc-\\u0acf\\u0b82\\u0bbe-\\u0bc2\\u0bc6-\\u0bc8\\u0bca-\\u0bcd\\u0c01-\\u0c03\\u0c3e-\\u0c56"
    "\\u0d3e-\\u0d44\\u0d46-\\u0d48\\u0e30-\\u0e3a\\u0e47-\\u0e4e\\u0eb1-\\u0ebc\\u0ec8-\\u0ecd"
)
_SPACE = " \\t\\u00a0\\u2000-\\u200a\\u3000"
_NEWLINE = "\\n\\r\\u2028\\u2029\\u000b\\u000c\\u0085"
_MISC_SYMBOLS = (
    "+%&~\\^|\\\\\\u00a6\\u00a7\\u00a8\\u00a9\\u00ac\\u00ae\\u00af\\u00b0-\\u00ba\\u00d7\\u00f7\\u0387\\u05be\\u05c0"
    "\\u05c3\\u05c6\\u05f3\\u05f4\\u0600-\\u0603\\u0606-\\u060a\\u060c\\u0614\\u061b\\u061e\\u066a\\u066d"
    "\\u0703-\\u070d\\u07f6\\u07f7\\u07f8\\u0964\\u0965\\u0e4f\\u1fbd\\u2016\\u2017\\u2020-\\u2023\\u2030-\\u2038"
    "\\u203b\\u203e-\\u2042\\u2044\\u207a-\\u207f\\u208a-\\u208e\\u2100-\\u214f\\u2190-\\u21ff\\u2200-\\u2bff"
    "\\u3012\\u30fb\\uff01-\\uff0f\\uff1a-\\uff20\\uff3b-\\uff40\\uff5b-\\uff65"
)
# Capitalised words after which a one-letter abbreviation ends the sentence ("... B. The ...").
_SENTENCE_STARTERS = _words(
    "About According Additionally After An A As At But Earlier He Her Here However If In It Last Many More "
    "Mr\\. Ms\\. Now Once One Other Our She Since So Some Such That The Their Then There These They This We "
    "What When While Yet You"
)


def _ci(word: str) -> str:
    """A caseless literal, as JFlex's %caseless reads literals (character classes stay case-sensitive)."""
    return f"(?i:{word})"


def _first_upper(word: str) -> str:
    """``[M]iss`` in the grammar: the first letter as written, the rest caseless."""
    return word[0] + (_ci(word[1:]) if len(word) > 1 else "")


@dataclass(frozen=True)
class _Rule:
    """One lexer rule: ``pattern`` matches the token in group ``t`` followed by its trailing context."""

    name: str
    source: str  # the regex of ``pattern``, compiled on first use: most rules never run on real captions
    first: re.Pattern[str]
    action: Callable[[str], str | None]
    # (text to emit, characters consumed) when the rule gives input back to be lexed again (JFlex's yypushback).
    split: Callable[[str], tuple[str, int]] | None = None
    # The token cannot match unless the line holds one of these characters (a cheap filter; "" = no filter).
    needs: str = ""

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(self.source, re.DOTALL)


def _same(token: str) -> str:
    return token


def _remove_soft_hyphens(token: str) -> str:
    return token.replace("\u00ad", "") or "-"


# latexQuotes' character classes: single quotes to ` and ', double quotes to `` and ''.
_LATEX_QUOTES = str.maketrans(
    dict.fromkeys("\u0091\u2018\u201b\u2039", "`")
    | dict.fromkeys("\u0092\u2019\u203a", "'")
    | dict.fromkeys("\u0093\u201c\u00ab", "``")
    | dict.fromkeys("\u0094\u201d\u00bb", "''")
)


def _quotes(token: str, left: bool) -> str:
    """LaTeX-style quote normalisation (``latexQuotes``): no replacement makes what a later one replaces."""
    single, double = ("`", "``") if left else ("'", "''")
    token = token.replace("&apos;", single).replace("'", single).replace('"', double).replace("&quot;", double)
    return token.translate(_LATEX_QUOTES)


def _left_quote(token: str) -> str:
    return _quotes(token, left=True)


def _right_quote(token: str) -> str:
    return _quotes(token, left=False)


def _amp(token: str) -> str:
    return re.sub("(?i:&amp;)", "&", token)


def _nbsp(token: str) -> str:
    return token.replace(" ", "\u00a0")


def _parens(token: str) -> str:
    return token.replace("(", "-LRB-").replace(")", "-RRB-")


def _const(value: str | None) -> Callable[[str], str | None]:
    return lambda _token: value


def _hyphens(token: str) -> str:
    return "--" if 3 <= len(token) <= 4 else token


def _currency(token: str) -> str:
    token = token.replace("\u00a2", "cents").replace("\u00a3", "#")
    return re.sub("[\u0080\u00a4\u20a0\u20ac]", "$", token)


def _fractions(token: str) -> str:
    table = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
    return "".join(table.get(char, char) for char in token)


def _acronym_split(token: str) -> tuple[str, int]:
    # processAcronym: "I." before a sentence start becomes "I" + "."; longer ones keep the period and repeat it.
    return (token[:1], 1) if len(token) == 2 else (token, len(token) - 1)


def _repeat_period(token: str) -> tuple[str, int]:
    return token, len(token) - 1


_APOSTROPHES = "'\u0092\u2019&"
# Characters one of which a rule's token must contain (keys: rule names, or their prefix before "_").
_NEEDS = {
    "PROG": "#+",
    "WORD_REDAUX": _APOSTROPHES,
    "SWORD_SREDAUX": _APOSTROPHES + "`\u0091\u2018\u201b",
    "APOWORD": _APOSTROPHES + "`\u0091\u2018\u201b",
    "APOWORD2": _APOSTROPHES,
    "FULLURL": ":",
    "LIKELYURL": ".",
    "EMAIL": "@",
    "TBSPEC": "-&.'\u0092\u2019",
    "THING3": "/",
    "ACRONYM": ".",
    "ABBREV3": ".",
    "ABBREV1": ".",
    "CO_LTD": ".",
    "ABBREV1_SENTEND": ".",
    "ABBREV2": ".",
    "ACRO": ".",
    "WORD_PERIOD": ".",
    "HTHING": "-",
    "HTHING_PERIOD": ".",
    "THING_PERIOD": ".",
    "THINGA_PERIOD": ".",
    "THINGA": "+&",
    "FILENAME": ".",
    "DATE": "-/",
    "FRAC": "/\u2044",
}
_NEED_CHARACTERS = "".join(sorted(set("".join(_NEEDS.values()))))


@cache
def _rules(full_unicode: bool) -> tuple[_Rule, ...]:
    """The lexer rules in the grammar's order (earlier wins a tie in length).

    With ``full_unicode=False`` the letter, digit and upper-case classes are cut down to ASCII: the same rules for
    ASCII text, and about twenty times faster to compile than the full classes.
    """
    if full_unicode:
        letter = _ranges(lambda c: unicodedata.category(c).startswith("L"))  # JFlex [:letter:]
        digit = _ranges(lambda c: unicodedata.category(c) == "Nd")
        upper = _ranges(lambda c: unicodedata.category(c) == "Lu")
        extra = _EXTRA_LETTERS
    else:
        # ASCII text cannot hold the extra letters (all beyond ASCII): leaving them out halves the compile time of
        # the rules a COCO run compiles (40 ms to start a process with).
        letter, digit, upper, extra = "A-Za-z", "0-9", "A-Z", ""
    splet = "&[aeiouAEIOU](?i:acute|grave|uml);"
    # The LETTER macro: [:letter:], marks and soft hyphen.
    let = f"(?:[{letter}{extra}]|{splet})"
    letdig = f"(?:[{letter}{extra}{digit}]|{splet})"
    word = f"{let}{letdig}*(?:[.!?]{let}{letdig}*)*"
    apos = "(?:['\\u0092\\u2019]|&(?i:apos);)"
    aposetc = f"(?:{apos}|[`\\u0091\\u2018\\u201b])"
    redaux = f"{apos}(?:[msdMSD]|{_ci('re|ve|ll')})"
    sword = "[A-Za-z\\u00ad]*[A-MO-Za-mo-z]\\u00ad*"
    sredaux = f"{_ci('n')}{aposetc}{_ci('t')}"
    alnum = f"[{letter}{digit}]"
    acro = (
        "(?:[A-Za-z](?:\\.[A-Za-z])+|(?i:canada|sino|korean|eu|japan|non)-(?i:u\\.s)"
        "|(?i:u\\.s\\.-(?:u\\.k|u\\.s\\.s\\.r)))"
    )
    num = f"(?:[{digit}]*(?:[.:,\\u00ad\\u066b\\u066c][{digit}]+)+)"
    hyphen = "[-_\\u058a\\u2010\\u2011]"
    thing_head = f"(?:[dDoOlL]{aposetc}{alnum})?"
    thing = f"{thing_head}{alnum}+(?:{hyphen}{thing_head}{alnum}+)*"
    hthing = f"[A-Za-z0-9][A-Za-z0-9.,\\u00ad]*(?:-(?:{acro}\\.|[A-Za-z0-9\\u00ad]+))+"
    thinga = "[A-Z]+(?:(?:[+&]|&(?i:amp);)[A-Z]+)+"
    spacenl = f"[{_SPACE}{_NEWLINE}]"
    name = "[A-Za-z][A-Za-z0-9_:.-]*"
    attribute = f"{name}(?:[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\"|{name}))?"
    sgml = f"<(?:[!?][A-Za-z-][^>\\r\\n]*|{name}(?:[ ]+{attribute})*[ ]*/?|/{name})[ ]*>"
    sentend = f"{spacenl}(?:{spacenl}|[{upper}]|{sgml})"
    ab_month = _words("jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri")
    ab_state = _words(
        "ala ariz calif colo conn ct dak fla ga ind kans kan ky md mich minn mo mont neb nev okla penn tenn "
        "va vt wisc wis wyo"
    )
    ab_state_cap = _words("Az Ark Del Ill La Mass Miss Ore Pa Tex Wash")
    ab_comp = _words("inc cos co corp ppty pptys ppte pptes pty ptys pte ptes ltd plc rt bancorp bhd assn univ")
    ab_other = _words("intl sys tel est ext sq jr sr bros ed\\.d ph\\.d blvd rd esq etc al seq bldg")
    abbrev1 = (
        "(?:"
        + "|".join([_ci("|".join(ab_month + ab_state + ab_comp + ab_other))] + [_first_upper(w) for w in ab_state_cap])
        + ")\\."
    )
    titles = _words(
        "mrs mr ms drs dr profs prof sens sen reps rep attys atty lt col gen messrs govs gov adm rev maj "
        "sgt cpl pvt capt ste st ave pres lieut rt hon brig comdr cmdr pfc spc supts supt det mt ft adj adv "
        "asst assoc ens insp mlle mme msgr sfc sr vs alex wm jos cie a\\.k\\.a cf treas ph invt elec natl mfg "
        "mtg dept blvd rd"
    )
    abbrev4 = f"(?:{_ci('|'.join(titles))}|{_first_upper('Miss')}|{acro}|[A-Za-z])"
    starters = "|".join(map(_first_upper, _SENTENCE_STARTERS))
    file_ext = (
        "bat|bmp|class|cgi|cpp|c|dll|docx|doc|exe|gif|gz|html|htm|h|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py"
        "|sql|tar|txt|wav|xml|x|zip"
    )
    smiley_eyes = "[<>]?[:;=][\\-o\\*']?[\\(\\)DPdpO\\\\{@\\|\\[\\]]"
    url_stop = '\\t\\n\\f\\r"<>|'
    url_path = f"(?:/[^ {url_stop}()]+[^ {url_stop}.!?(){{}},-])?"
    cur = "\\u00a2\\u00a3\\u00a4\\u00a5\\u0080\\u20a0\\u20ac\\u060b\\u0e3f\\u20a4\\uffe0\\uffe1\\uffe5\\uffe6"

    def rule(
        name: str,
        pattern: str,
        first: str,
        action: Callable[[str], str | None] = _same,
        split: Callable[[str], tuple[str, int]] | None = None,
    ) -> _Rule:
        needs = _NEEDS.get(name, _NEEDS.get(name.split("_")[0], ""))
        return _Rule(name, pattern, re.compile(first), action, split, needs)

    def tok(token: str, trailing: str = "") -> str:
        """The token in group ``t``, then its trailing context (matched, so that it counts towards the length)."""
        return f"(?P<t>{token}){trailing}"

    rules = [
        rule("PROG_LANGS", tok("(?i:c)\\+\\+|(?i:[cf])#"), "[cCfF]"),
        rule("ASSIMILATIONS3", tok("(?i:cannot|'twas)"), "[cC']", split=lambda t: (t[:-3], len(t) - 3)),
        rule(
            "ASSIMILATIONS2",
            tok("(?i:'tis|gonna|gotta|lemme|gimme|wanna)"),
            "['gGlLwW]",
            split=lambda t: (t[:-2], len(t) - 2),
        ),
        rule("SGML", tok(sgml), "<", _nbsp),
        rule(
            "SPMDASH",
            tok("&(?i:md|mdash|ndash);|[\\u0096\\u0097\\u2013\\u2014\\u2015]"),
            "[&\\u0096\\u0097\\u2013-\\u2015]",
            _const("--"),
        ),
        rule("SPAMP", tok("&(?i:amp);"), "&", _amp),
        rule("SPPUNC", tok("&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"), "&"),
        rule("WORD_REDAUX", tok(word, redaux), f"[{letter}{extra}&]", _remove_soft_hyphens),
        rule("SWORD_SREDAUX", tok(sword, sredaux), "[A-Za-z\\u00ad]", _remove_soft_hyphens),
        rule("WORD", tok(word), f"[{letter}{extra}&]", _remove_soft_hyphens),
        # APOWORD, one rule per alternative so that the longest alternative wins.
        rule("APOWORD_N", tok(f"{apos}{_ci('n')}{apos}?"), "['\\u0092\\u2019&]"),
        rule("APOWORD_L", tok(f"[lLdDjJ]{apos}"), "[lLdDjJ]"),
        rule("APOWORD_DROP", tok(f"{_ci('dunkin|somethin|ol')}{apos}"), "[dDsSoO]"),
        rule("APOWORD_EM", tok(f"{apos}{_ci('em')}"), "['\\u0092\\u2019&]"),
        rule("APOWORD_NAME", tok(f"[A-HJ-XZn]{aposetc}[{letter}]{{2,}}"), "[A-HJ-XZn]"),
        rule("APOWORD_DECADE", tok(f"{apos}[2-9]0{_ci('s')}"), "['\\u0092\\u2019&]"),
        rule("APOWORD_TILL", tok(f"{apos}{_ci('till?')}"), "['\\u0092\\u2019&]"),
        rule("APOWORD_VOWEL", tok(f"[{letter}]+[aeiouyAEIOUY]{aposetc}[aeiouA-Z][{letter}]*"), f"[{letter}]"),
        rule("APOWORD_CAUSE", tok(f"{apos}{_ci('cause')}"), "['\\u0092\\u2019&]"),
        rule("APOWORD_CONTD", tok(f"{_ci('cont')}'{_ci('d')}\\.?"), "[cC]"),
        rule("APOWORD_WORDS", tok(_ci("'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l")), "['nNcCeEsSlL]"),
        rule("APOWORD2", tok(f"{_ci('y')}{apos}", f"[{letter}]"), "[yY]"),
        rule("FULLURL", tok(f"{_ci('https?')}://[^ {url_stop}(){{}}]+[^ {url_stop}.!?(){{}},-]"), "[hH]"),
        rule(
            "LIKELYURL_WWW",
            tok(f"{_ci('www')}\\.(?:[^ {url_stop}.!?(){{}},]+\\.)+[a-zA-Z]{{2,4}}{url_path}"),
            "[wW]",
        ),
        rule(
            "LIKELYURL",
            tok(f"(?:[^ {url_stop}`'.!?(){{}},-_$]+\\.)+{_ci('com|net|org|edu')}{url_path}"),
            f"[^ {url_stop}]",
        ),
        rule(
            "EMAIL",
            tok(
                '(?:&(?i:lt);|<)?[a-zA-Z0-9][^ \\t\\n\\f\\r"<>|(){}\\u00a0]*@(?:[^ \\t\\n\\f\\r"<>|(){}.\\u00a0]+\\.)*'
                '[^ \\t\\n\\f\\r"<>|(){}.\\u00a0]+(?:&(?i:gt);|>)?'
            ),
            "[a-zA-Z0-9<&]",
        ),
        rule("TWITTER_NAME", tok("@[a-zA-Z_][a-zA-Z_0-9]*"), "@"),
        rule("TWITTER_CATEGORY", tok(f"#{let}+"), "#"),
        rule("REDAUX_END", tok(redaux, "(?:[^A-Za-z]|\\Z)"), "['\\u0092\\u2019&]", _right_quote),
        rule("SREDAUX", tok(sredaux), "[nN]", _right_quote),
        rule("DATE", tok(f"[{digit}]{{1,2}}[\\-/][{digit}]{{1,2}}[\\-/][{digit}]{{2,4}}"), f"[{digit}]"),
        rule("NUMBER_INT", tok(f"[\\-+]?[{digit}]+"), f"[\\-+{digit}]", _remove_soft_hyphens),
        rule("NUMBER", tok(f"[\\-+]?{num}"), f"[\\-+.:,\\u00ad\\u066b\\u066c{digit}]", _remove_soft_hyphens),
        rule(
            "SUBSUPNUM",
            tok("[\\u207a\\u207b\\u208a\\u208b]?(?:[\\u2070\\u00b9\\u00b2\\u00b3\\u2074-\\u2079]+|[\\u2080-\\u2089]+)"),
            "[\\u207a\\u207b\\u208a\\u208b\\u2070\\u00b9\\u00b2\\u00b3\\u2074-\\u2079\\u2080-\\u2089]",
        ),
        rule(
            "FRAC",
            tok(f"(?:[{digit}]{{1,4}}[- \\u00a0])?[{digit}]{{1,4}}(?:\\\\?/|\\u2044)[{digit}]{{1,4}}"),
            f"[{digit}]",
            _nbsp,
        ),
        rule("FRAC2", tok("[\\u00bc\\u00bd\\u00be\\u2153-\\u215e]"), "[\\u00bc-\\u00be\\u2153-\\u215e]", _fractions),
        rule(
            "TBSPEC",
            tok(
                f"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\\.d\\.s|pro-|anti-)|(?i:s)(?:&|&(?i:amp);)(?i:p-500)"
                f"|(?i:s)(?:&|&(?i:amp);)(?i:ls)|(?i:cap){apos}(?i:n)|(?i:c){apos}(?i:est)"
            ),
            "[-cCpPaAsS]",
            _amp,
        ),
        rule(
            "THING3",
            tok("[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),
            "[A-Za-z0-9]",
        ),
        rule("DOLSIGN", tok("[A-Z]*\\$"), "[A-Z$]"),
        rule("HASH", tok("#"), "#"),
        rule("DOLSIGN2", tok(f"[{cur}]"), f"[{cur}]", _currency),
        rule(
            "ACRONYM_SENTENCE_END",
            tok(f"{acro}\\.|[A-Za-z]\\.", f"{spacenl}+(?:{starters}|{sgml})(?:{spacenl}|\\Z)"),
            "[A-Za-z]",
            split=_acronym_split,
        ),
        rule("ABBREV3", tok(_ci("ca|figs?|prop|nos?|art|pp|op") + "\\.", f"{spacenl}?[{digit}]"), "[cCfFpPnNaAoO]"),
        # An ABBREV1 before an upper-case word or a blank line ends the sentence: it keeps its period and the
        # period is lexed again. Its plain form looks two characters ahead, which lets "Inc.A" beat WORD "Inc.A".
        rule("CO_LTD", tok(f"{_ci('pt[ey]|co')}\\.", f"[{_SPACE}]{_ci('ltd|lim')}"), "[pPcC]"),
        rule("ABBREV1_SENTEND", tok(abbrev1, sentend), "[A-Za-z]", split=_repeat_period),
        rule("ABBREV1_ANY", tok(abbrev1, "(?s:..)"), "[A-Za-z]"),
        rule("ABBREV1", tok(abbrev1), "[A-Za-z]", split=_repeat_period),
        rule("ABBREV2", tok(f"{abbrev4}\\."), "[A-Za-z]"),
        rule("ACRO_SPACENL", tok(acro, f"(?:{spacenl}|\\Z)"), "[A-Za-z]"),
        rule("TBSPEC2", tok(f"{apos}[0-9][0-9]", f"(?:{spacenl}|\\Z)"), "['\\u0092\\u2019&]"),
        rule(
            "FILENAME",
            tok(f"{alnum}+(?:\\.{alnum}+)*\\.{_ci(file_ext)}", f"(?:{spacenl}|[.?!,]|\\Z)"),
            f"[{letter}{digit}]",
        ),
        rule("WORD_PERIOD", tok(f"{word}\\.", "[,;:\\u3001]"), f"[{letter}{extra}&]", _remove_soft_hyphens),
        rule(
            "PHONE",
            tok(
                "(?:\\([0-9]{2,3}\\)[ \\u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[\\- \\u00a0])?[0-9]{2,4}[\\- \\u00a0])"
                "[0-9]{3,4}[\\- \\u00a0]?[0-9]{3,5}"
            ),
            "[(+0-9]",
            lambda t: _parens(_nbsp(t)),
        ),
        rule(
            "PHONE_DOTS",
            tok("(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}"),
            "[+0-9]",
        ),
        rule("DBLQUOT_LEFT", tok('"|&(?i:quot);', "[A-Za-z0-9$]"), '["&]', _left_quote),
        rule("DBLQUOT", tok('"|&(?i:quot);'), '["&]', _right_quote),
        rule("DEL", tok("\\x7f"), "\\x7f", _const(None)),
        rule("LESSTHAN", tok("<|&(?i:lt);"), "[<&]", _const("<")),
        rule("GREATERTHAN", tok(">|&(?i:gt);"), "[>&]", _const(">")),
        rule("SMILEY", tok(smiley_eyes, "(?:[^A-Za-z0-9]|\\Z)"), "[<>:;=]", _parens),
        rule("ASIANSMILEY_1", tok("[\\^x=~<>]\\.\\[\\^x=~<>\\]"), "[\\^x=~<>]", _parens),
        rule("ASIANSMILEY_2", tok("[\\-\\^x=~<>']_[\\-\\^x=~<>']"), "[\\-\\^x=~<>']", _parens),
        rule("ASIANSMILEY_3", tok("\\([\\-\\^x=~<>'][_.]?[\\-\\^x=~<>']\\)"), "\\(", _parens),
        rule("ASIANSMILEY_4", tok("\\([\\^x=~<>']-[\\^x=~<>'`]\\)"), "\\(", _parens),
        rule("LBRACE", tok("\\{"), "\\{", _const("-LCB-")),
        rule("RBRACE", tok("\\}"), "\\}", _const("-RCB-")),
        rule("LBRACKET", tok("\\["), "\\[", _const("-LSB-")),
        rule("RBRACKET", tok("\\]"), "\\]", _const("-RSB-")),
        rule("LPAREN", tok("\\("), "\\(", _const("-LRB-")),
        rule("RPAREN", tok("\\)"), "\\)", _const("-RRB-")),
        rule("HYPHENS", tok("-+"), "-", _hyphens),
        rule("LDOTS", tok("\\.{3,5}|(?:\\.[ \\u00a0]){2,4}\\.|[\\u0085\\u2026]"), "[.\\u0085\\u2026]", _const("...")),
        rule("ATS", tok("@+"), "@"),
        rule("HASHES", tok("#+"), "#"),
        rule("UNDS", tok("_+"), "_"),
        rule("ASTS", tok("\\*+|(?:\\\\\\*){1,3}"), "[*\\\\]"),
        rule("INSENTP", tok("[,;:\\u3001]"), "[,;:\\u3001]"),
        rule("QMARKS", tok("[?!]+"), "[?!]"),
        rule(
            "PERIOD",
            tok("[.\\u00a1\\u00bf\\u037e\\u0589\\u061f\\u06d4\\u0700-\\u0702\\u07fa\\u3002]"),
            "[.\\u00a1\\u00bf\\u037e\\u0589\\u061f\\u06d4\\u0700-\\u0702\\u07fa\\u3002]",
        ),
        rule("EQUALS", tok("="), "="),
        rule("SLASH", tok("/"), "/"),
        rule("HTHING_PERIOD", tok(f"{hthing}\\.", "[,;:\\u3001]"), "[A-Za-z0-9]", _remove_soft_hyphens),
        rule("HTHING", tok(hthing), "[A-Za-z0-9]", _remove_soft_hyphens),
        rule("THING_PERIOD", tok(f"{thing}\\.", "[,;:\\u3001]"), f"[{letter}{digit}]"),
        rule("THING", tok(thing), f"[{letter}{digit}]"),
        rule("THINGA_PERIOD", tok(f"{thinga}\\.", "[,;:\\u3001]"), "[A-Z]", _amp),
        rule("THINGA", tok(thinga), "[A-Z]", _amp),
        rule("QUOTE_LEFT", tok("'", "[A-Za-z][^ \\t\\n\\r\\u00a0]"), "'", _left_quote),
        rule("REDAUX", tok(redaux), "['\\u0092\\u2019&]", _right_quote),
        rule("QUOTES_APOS", tok(apos), "['\\u0092\\u2019&]", _right_quote),
        rule("QUOTES_DOUBLE", tok("''"), "'", _right_quote),
        rule(
            "QUOTES",
            tok(
                "[`\\u2018\\u2019\\u201a\\u201b\\u201c\\u201d\\u0091-\\u0094\\u201e\\u201f\\u2039\\u203a\\u00ab\\u00bb]{1,2}"
            ),
            "[`\\u2018\\u2019\\u201a-\\u201f\\u0091-\\u0094\\u2039\\u203a\\u00ab\\u00bb]",
            _right_quote,
        ),
        rule("FAKEDUCKFEET", tok("<<|>>"), "[<>]"),
        rule("MISCSYMBOL", tok(f"[{_MISC_SYMBOLS}]"), f"[{_MISC_SYMBOLS}]"),
        rule(
            "SPACES",
            tok(f"\\x00|[{_SPACE}]+|[\\u200b\\u200e\\u200f\\ufeff]"),
            f"[\\x00{_SPACE}\\u200b\\u200e\\u200f\\ufeff]",
            _const(None),
        ),
        rule("NEWLINE", tok(f"\\r?\\n|[{_NEWLINE}]"), f"[{_NEWLINE}]", _const(None)),
        rule("NBSP", tok("&(?i:nbsp);"), "&", _const(None)),
    ]
    return tuple(rules)


@cache
def _candidates(char: str, full_unicode: bool, present: str) -> tuple[_Rule, ...]:
    """The rules whose token can start with ``char`` in a line holding the filter characters ``present``."""
    return tuple(r for r in _starting_with(char, full_unicode) if not r.needs or any(c in present for c in r.needs))


@cache
def _starting_with(char: str, full_unicode: bool) -> tuple[_Rule, ...]:
    """The rules whose token can start with ``char`` (lines hold far fewer distinct characters than filter sets)."""
    return tuple(r for r in _rules(full_unicode) if r.first.match(char))


# A run of ASCII letters followed by a space or the end of the line, or by one punctuation mark and then a space or
# the end, is one WORD token: no rule can match longer there. The lexer takes this shortcut before trying every
# rule; assimilations ("gonna") and possible abbreviations before a period ("st.", "x.") are the exceptions.
_PLAIN_WORD = re.compile(f"[A-Za-z]+(?=([.,;:!?]?)(?:[ \\t\\n]|\\Z))|[ \\t][{_SPACE}]*|[,;:](?=[ \\t\\n]|\\Z)")
_ASSIMILATED_SET = frozenset(_ASSIMILATED)
_ABBREVIATION_SET = frozenset(_ABBREVIATION_WORDS)


def _plain_token(match: re.Match[str]) -> bool:
    word = match[0].lower()
    if word in _ASSIMILATED_SET:
        return False
    return match[1] != "." or (len(word) > 1 and word not in _ABBREVIATION_SET)


def _lex(text: str, end: int) -> list[str]:
    """PTB tokens (original case) of ``text[:end]``; ``text[end:]`` is what follows (lookahead only)."""
    full_unicode = not text.isascii()
    present = "".join(c for c in _NEED_CHARACTERS if c in text)
    tokens: list[str] = []
    pos = 0
    while pos < end:
        if text[pos] == " ":  # a space run is one SPACES token, which writes nothing: skip a space at a time
            pos += 1
            continue
        plain = _PLAIN_WORD.match(text, pos)
        if plain is not None and plain.end() <= end and _plain_token(plain):
            if not plain[0].isspace():
                tokens.append(plain[0])
            pos = plain.end()
            continue
        best_len, best_rule, best_token = 0, None, ""
        for rule in _candidates(text[pos], full_unicode, present):
            match = rule.pattern.match(text, pos)
            if match is not None and match.end() - pos > best_len and match.end("t") <= end:
                best_len, best_rule, best_token = match.end() - pos, rule, match["t"]
        if best_rule is None:
            pos += 1  # an untokenizable character: the lexer deletes it
            continue
        consumed = len(best_token)
        if best_rule.split is not None:
            best_token, consumed = best_rule.split(best_token)
        output = best_rule.action(best_token)
        if output is not None:
            tokens.append(output)
        pos += consumed
    return tokens


def _in_word(char: str) -> bool:
    """Whether ``char`` continues a word for Java's word BreakIterator (letters and digits, not ideographs)."""
    return char.isalnum() and not unicodedata.name(char, "").startswith(("CJK", "HIRAGANA", "KATAKANA"))


def _cased(char: str) -> bool:
    return char.lower() != char or char.upper() != char


def _java_lower(token: str) -> str:
    """Java's ``String.toLowerCase(Locale.ENGLISH)``.

    It differs from ``str.lower`` only for a capital sigma: Java writes the final form when a cased letter precedes
    it and none follows within the same word (``"ΣΟΦΟΣ4th"`` -> ``"σοφοσ4th"``, ``"ΣΟΦΟΣ90"`` -> ``"σοφος90"``).
    """
    lowered = token.lower()
    if "\u03a3" not in token or len(lowered) != len(token):
        return lowered
    chars = list(lowered)
    for i, char in enumerate(token):
        if char != "\u03a3":
            continue
        before = next((c for c in reversed(token[:i]) if not _in_word(c) or _cased(c)), "")
        after = token[i + 1 :]
        end = next((j for j, c in enumerate(after) if not _in_word(c)), len(after))
        final = _cased(before) and before.isalpha() and not any(_cased(c) for c in after[:end])
        chars[i] = "\u03c2" if final else "\u03c3"
    return "".join(chars)


def ptb_tokens(caption: str, following: str = "") -> list[str]:
    """The lower-cased PTB tokens of one caption, before pycocoevalcap removes punctuation.

    ``following`` is the text after the caption in pycocoevalcap's file (``"\\n"`` and the next caption), used
    only for lookahead. Example: ``ptb_tokens("A man's hat (red).")`` -> ``['a', 'man', "'s", 'hat', '-lrb-',
    'red', '-rrb-', '.']``.
    """
    line = caption.replace("\n", " ").translate(_LINE_BREAKS)
    return [_java_lower(token) for token in _lex(line + following, len(line))]


def _single_spaced_lines(text: str) -> list[str]:
    """Each line's words joined by single spaces (``" ".join(line.split())``); most lines already are, as they are."""
    return [
        line if "  " not in line and line[:1] != " " and line[-1:] != " " else " ".join(line.split())
        for line in text.split("\n")
    ]


def _one_line(caption: object, index: int) -> str:
    if not isinstance(caption, str):  # None failed as "'NoneType' object has no attribute 'replace'"
        raise InputError(f"captions[{index}]", f"a caption must be a string, got {type(caption).__name__}")
    return caption.replace("\n", " ")


def _tokenize_line(line: str, following: str) -> str:
    # pycocoevalcap: line.rstrip().split(" "), which also strips a trailing U+00A0 from the last token.
    joined = " ".join(map(_java_lower, _lex(line + following, len(line)))).rstrip()
    return " ".join(t for t in joined.split(" ") if t not in PUNCTUATION)


def tokenize(caption: str) -> str:
    """One caption as pycocoevalcap tokenizes it: PTB tokens, lower-cased, punctuation removed, space-joined.

    >>> tokenize("A man's hat (red), isn't it?")
    "a man 's hat -lrb- red -rrb- is n't it"
    """
    return tokenize_captions([caption])[0]


def tokenize_captions(captions: Iterable[str]) -> list[str]:
    """Tokenize captions as pycocoevalcap tokenizes them in one call (one line each, in this order).

    An ``InputError`` naming ``captions[i]`` for an item that is no string (a None from a missing caption).
    """
    lines = [_one_line(caption, index) for index, caption in enumerate(captions)]
    if not lines:
        return []
    text = "\n".join(lines)
    if any(char in text for char in "\r\u2028\u2029\x0b\x0c"):
        text = text.translate(_LINE_BREAKS)
        lines = text.split("\n")
    needs_lexer = _lines_needing_lexer(text, text.translate(_ASCII_LOWER))
    out = _single_spaced_lines(text.translate(_FAST_TABLE))
    done: dict[str, str] = {}
    for i in sorted(needs_lexer):
        line = lines[i]
        cached = done.get(line)
        if cached is None:
            following = "\n" + lines[i + 1] if i + 1 < len(lines) else ""
            cached = _tokenize_line(line, following)
            # Only a caption ending in a period can depend on the next caption (see the module docstring).
            if not line.rstrip().endswith("."):
                done[line] = cached
        out[i] = cached
    return out
