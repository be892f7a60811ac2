"""PTB tokenization: identical to pycocoevalcap's (Stanford CoreNLP 3.4.1 in Java) on real captions.

The Java reference runs the jar pycocoevalcap ships exactly as ``PTBTokenizer.tokenize`` does (same command line,
captions one a line, same punctuation removal), but on a file in ``tmp_path``.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Callable

import pytest

from _data import SHARED_DATA
from _java import require_java, require_pycocoevalcap
from captionkit.errors import InputError
from captionkit.evaluation.tokenize import ptb_tokens, tokenize, tokenize_captions

DATA = SHARED_DATA

JavaTokenizer = Callable[[list[str]], list[str]]


def coco_captions() -> list[str]:
    data = json.loads((DATA / "coco" / "captions_val2017.json").read_text(encoding="utf-8"))
    return [a["caption"] for a in data["annotations"]]


def flickr_captions() -> list[str]:
    lines = (DATA / "flickr8k" / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1] for line in lines if line.strip()]


def senticap_captions() -> list[str]:
    data = json.loads((DATA / "senticap" / "senticap.json").read_text(encoding="utf-8"))
    return [s["raw"] for image in data["images"] for s in image["sentences"]]


# Hard cases (from probing the Java tokenizer); each line is tokenized in one batch, as pycocoevalcap does.
PROBES = [
    "A man's hat (red), isn't it?",
    "gonna wanna gotta lemme gimme cannot Cannot 'tis 'Twas",
    "\"hello\" 'hi' it's don't can't won't I'm we're they've you'll he'd O'Neil o'clock y'all rock 'n' roll",
    "a [b] <c> <b>bold</b> &lt; &gt; {d} &amp; AT&T R&D b&w A+B C++ C# x++",
    "Mr. Smith and Dr. Who at St. Paul, Inc. etc. vs. T.V. U.S. a.m. no. 5 fig. 2 Mass. mass. Co. Ltd.",
    "1,000 1.5 .5 3:30 :30 2 1/2 555-1234 555-123-4567 (555) 555-1234 10/12/2014 24/7 5-year-old '90s 90's",
    "a -- b --- c - d ---- e ----- f x-ray T-shirt co-op pre-game and/or w/o a/b/c/d",
    "wow!!! what?! ok... . . . well.... well...... … :) :-) ;P =) ^_^ (^_^) -_- <3",
    "café naïve über Zoë ΣΟΦΟΣ ΣΟΦΟΣ4th Москва 東京 हिन्दीT-SHIRT “quoted” ‘single’ don’t «x» — – 😀 👍",
    "½ ¼ ¾ ⅓ ⅔ ⅛ €5 £5 ¢ ¥100 US$5 $5 # #1 #tag @user www.example.com http://x.org/a/b http://x.org/a{b} a@b.com",
    "photo.jpg ftp://x.org/ab x@y.z{w}",
    "end.The one.two a.b.c.d e.g.x 1a.x img_01.jpg Inc.A etc.,",
    "the letter B.",
    "The dog runs.",
    "the letter x.",
    "a dog.",
    "no.",
    "5 dogs",
    "trailing nbsp\xa0www.x.com\xa0",
    "",
    "   ",
]


@pytest.fixture(scope="module")
def java_tokenize(tmp_path_factory: pytest.TempPathFactory) -> JavaTokenizer:
    package = require_pycocoevalcap()
    require_java()
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = package / "tokenizer" / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    folder = tmp_path_factory.mktemp("ptb")

    def run(captions: list[str]) -> list[str]:
        source = folder / "captions.txt"
        source.write_bytes("\n".join(c.replace("\n", " ") for c in captions).encode())
        command = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        lines = subprocess.run([*command, str(source)], capture_output=True, check=True).stdout.decode().split("\n")
        punctuation = ptbtokenizer.PUNCTUATIONS
        return [" ".join(w for w in line.rstrip().split(" ") if w not in punctuation) for line in lines][
            : len(captions)
        ]

    return run


def _java_lines(captions: list[str]) -> list[str]:
    # The Java lexer also breaks lines at \r (and U+2028 ...), which would misalign pycocoevalcap's output; our
    # tokenizer reads them as spaces, so compare against Java given spaces there.
    return [c.replace("\n", " ").replace("\r", " ") for c in captions]


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("A man's hat (red), isn't it?", "a man 's hat -lrb- red -rrb- is n't it"),
        ("He cannot; we're gonna go.", "he can not we 're gon na go"),
        ("She said \"hi\" and 'bye'.", "she said hi and bye"),
        ("Mr. Smith at St. Paul, Inc. in the U.S.", "mr. smith at st. paul inc. in the u.s."),
        ("a [b] {c} <d>", "a -lsb- b -rsb- -lcb- c -rcb- <d>"),
        ("2 1/2 cups, 1,000 men, (555) 555-1234", "2\xa01/2 cups 1,000 men -lrb-555-rrb-\xa0555-1234"),
        ("a -- b --- c - d ... e … f", "a b c d e f"),
        ("wow!!! what?! :)", "wow !!! what ?! :-rrb-"),
        ("café “naïve” don’t über 😀", "café naïve do n't über"),
        ("½ cup, €5 or £5", "1/2 cup $ 5 or # 5"),
        ("AT&T and b&w A&amp;B", "at&t and b & w a&b"),
        ("", ""),
    ],
)
def test_known_tokenizations(caption: str, expected: str) -> None:
    assert tokenize(caption) == expected


def test_raw_tokens_keep_punctuation() -> None:
    assert ptb_tokens("A man's hat (red).") == ["a", "man", "'s", "hat", "-lrb-", "red", "-rrb-", "."]


def test_one_letter_abbreviation_depends_on_next_caption() -> None:
    # pycocoevalcap tokenizes all captions as one text: "B." ends a sentence when "The" starts the next line.
    assert tokenize_captions(["the letter B.", "The dog runs."]) == ["the letter b", "the dog runs"]
    assert tokenize_captions(["the letter B.", "a dog runs."]) == ["the letter b.", "a dog runs"]
    assert tokenize("the letter B.") == "the letter b."


def test_line_breaks_inside_captions_are_spaces() -> None:
    assert tokenize_captions(["a room\r\nwith light", "next"]) == ["a room with light", "next"]
    assert tokenize_captions(["a\u2028b"]) == ["a b"]


def test_batch_equals_one_by_one_for_plain_captions() -> None:
    captions = coco_captions()[:500]
    assert tokenize_captions(captions) == [tokenize(c) for c in captions]


def test_lines_for_the_full_lexer_are_found_after_multi_byte_characters() -> None:
    # Odd characters, glued marks, abbreviation suspects and assimilations, each after lines whose characters take
    # several UTF-8 bytes (byte and character offsets part there): the batch still equals caption by caption.
    captions = ["é" * 40, "a", "x.y z", "b c", "\U0001f600 b", "near St. Paul", "d", "gonna go", "sit at b.", "a cat"]
    tokenized = tokenize_captions(captions)
    assert tokenized == [tokenize(c) for c in captions]
    assert tokenized[1:9] == ["a", "x.y z", "b c", "b", "near st. paul", "d", "gon na go", "sit at b."]


def test_probes_match_java(java_tokenize: JavaTokenizer) -> None:
    assert tokenize_captions(PROBES) == java_tokenize(PROBES)


def test_real_captions_sample_matches_java(java_tokenize: JavaTokenizer) -> None:
    rng = random.Random(0)
    captions = rng.sample(coco_captions(), 4000) + flickr_captions() + rng.sample(senticap_captions(), 2000)
    assert tokenize_captions(captions) == java_tokenize(_java_lines(captions))


def test_mutated_captions_match_java(java_tokenize: JavaTokenizer) -> None:
    # Real captions with odd pieces spliced in: punctuation, unicode, numbers, clitics, abbreviations.
    pieces = [
        "'",
        '"',
        "’",
        "“",
        "”",
        ".",
        "..",
        "...",
        ",",
        ";",
        ":",
        "!",
        "?!",
        "--",
        "---",
        "–",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "<",
        ">",
        "/",
        "*",
        "&",
        "#",
        "@",
        "$",
        "%",
        "_",
        "+",
        "=",
        "…",
        "½",
        "€",
        "£",
        "é",
        "ß",
        "д",
        "中",
        "😀",
        "\xa0",
    ]
    pieces += ["n't", "'s", "'re", "gonna", "St.", "etc.", "U.S.", "A.", "x.", "No. 5", ":)", "^_^", "C++", "o'clock"]
    pieces += ["1,000", "3.5", "10:30", "2 1/2", "(555) 555-1234", "www.x.com", "a@b.com", "co-op", "and/or", "AT&T"]
    rng = random.Random(1)
    lines = []
    for caption in rng.sample(coco_captions(), 1500):
        words = caption.split(" ")
        for _ in range(rng.randint(1, 4)):
            words.insert(rng.randint(0, len(words)), rng.choice(pieces))
        line = " ".join(words)
        lines.append(line.upper() if rng.random() < 0.1 else line)
    assert tokenize_captions(lines) == java_tokenize(lines)


@pytest.mark.slow
@pytest.mark.parametrize("source", [coco_captions, flickr_captions, senticap_captions], ids=lambda f: f.__name__)
def test_all_captions_match_java(java_tokenize: JavaTokenizer, source: Callable[[], list[str]]) -> None:
    captions = source()
    assert tokenize_captions(captions) == java_tokenize(_java_lines(captions))


def test_line_numbers_of_offsets_in_text_and_bytes() -> None:
    from captionkit.evaluation.lines import line_numbers, occurrences

    text = "ab\n\ncab\nb"
    assert list(occurrences(text, "b")) == [1, 6, 8]
    assert line_numbers(text, [8, 1, 6, 0, 3]) == [0, 0, 1, 2, 3]  # sorted by offset; the empty line is line 1
    data = "é\nb".encode()
    assert line_numbers(data, occurrences(data, b"b")) == [1]


def test_an_item_that_is_no_string_is_named_by_its_position() -> None:
    """A None from a missing caption failed as "'NoneType' object has no attribute 'replace'"."""
    with pytest.raises(InputError, match=r"^captions\[1\]: a caption must be a string, got NoneType$"):
        tokenize_captions(["a dog.", None])  # type: ignore[list-item]
    with pytest.raises(InputError, match=r"^captions\[0\]: a caption must be a string, got int$"):
        tokenize_captions(iter([3]))  # type: ignore[list-item]
