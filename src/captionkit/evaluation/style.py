"""Is the requested style really there? A sentiment classifier built without downloads, and the style table.

The classifier is a multinomial naive Bayes over PTB tokens (the COCO evaluation's tokenizer), trained on captions
whose style is known: SentiCap's positive and negative captions and neutral (factual) captions such as COCO's, or a
model's own training captions. Its priors are uniform (a style request fixes how often each style occurs, not the
training mix), its smoothing additive; a token no style was trained on is left out of the scores. SentiCap marks
the words of each adjective-noun pair (ANP) that carries the sentiment (``word_sentiment``);
:func:`senticap_sentiment_words` collects the adjectives among them, and :meth:`StyleClassifier.fit` counts each
``lexicon_weight`` more times, so the sentiment adjectives weigh more than the nouns that happen to occur beside them.

The style table (:func:`evaluate_styles`) reports, for each requested style: **style accuracy** (share of captions
the classifier assigns to the requested style; None for a style it was not trained on), **CIDEr-D** against that
style's references, and **content match** (share of styled captions whose content words still cover at least half
of the content words of the neutral caption for the same image; content words are the caption's tokens minus stop
words and the classifier's style words). ``content_exact`` is the strict form: the styled caption with its style
words removed (and "an" read as "a") equals the neutral one.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captionkit.data.formats.senticap import SENTIMENTS as SENTICAP_SENTIMENTS
from captionkit.data.records import STYLES
from captionkit.errors import InputError
from captionkit.evaluation.tokenize import tokenize_captions
from captionkit.files import read_text, write_atomic
from captionkit.jsontext import parse_json

# Function words of captions: not content (whatever their style evidence).
STOP_WORDS = frozenset(
    "a an the of on in at to with and is are there it its this that some two three by for from near next into onto "  # noqa: SIM905
    "while his her their be being has have".split()
)


@dataclass
class StyleClassifier:
    """Multinomial naive Bayes over caption tokens with uniform priors (see the module docstring)."""

    styles: tuple[str, ...]
    # style -> token -> log P(token | style); tokens never seen with a style get unseen[style].
    log_likelihood: dict[str, dict[str, float]]
    unseen: dict[str, float]
    # Tokens whose presence is evidence for a non-neutral style (log-ratio against every other style above a
    # threshold).
    style_words: frozenset[str]

    @classmethod
    def fit(
        cls,
        examples: Iterable[tuple[str, str]],
        alpha: float = 1.0,
        lexicon: Mapping[str, str] | None = None,
        lexicon_weight: int = 1,
        style_word_ratio: float = 3.0,
        style_word_count: int = 5,
    ) -> StyleClassifier:
        """Train on ``(caption, style)`` pairs; ``lexicon`` maps marked sentiment words to their style.

        Style words (what content matching ignores): the lexicon's words, and words seen at least
        ``style_word_count`` times with a non-neutral style and ``style_word_ratio`` times likelier there than in
        captions of any other style. The defaults were chosen on SentiCap + COCO (see the tests' measured accuracy).
        """
        pairs = list(examples)
        styles = sorted({style for _, style in pairs}, key=lambda s: (STYLES.index(s) if s in STYLES else 9, s))
        if len(styles) < 2:
            raise InputError("style classifier", f"needs captions of at least two styles, got {styles}")
        tokens = tokenize_captions(caption for caption, _ in pairs)
        counts: dict[str, Counter[str]] = {style: Counter() for style in styles}
        for text, (_, style) in zip(tokens, pairs, strict=True):
            words = text.split()
            counts[style].update(words)
            if lexicon:
                for word in words:
                    if lexicon.get(word) == style:
                        counts[style][word] += lexicon_weight
        vocabulary = set().union(*counts.values())
        size = len(vocabulary) + 1  # + one slot for unseen tokens
        log_likelihood, unseen = {}, {}
        for style in styles:
            total = sum(counts[style].values()) + alpha * size
            log_likelihood[style] = {w: math.log((c + alpha) / total) for w, c in counts[style].items()}
            unseen[style] = math.log(alpha / total)
        classifier = cls(tuple(styles), log_likelihood, unseen, frozenset())
        found = {word for word, style in (lexicon or {}).items() if style in styles and style != "neutral"}
        for style in styles:
            if style == "neutral":
                continue
            others = [s for s in styles if s != style]
            for word, count in counts[style].items():
                lift = classifier._log_p(word, style) - max(classifier._log_p(word, s) for s in others)
                if count >= style_word_count and lift > math.log(style_word_ratio) and word not in STOP_WORDS:
                    found.add(word)
        classifier.style_words = frozenset(found)
        return classifier

    def _log_p(self, word: str, style: str) -> float:
        return self.log_likelihood[style].get(word, self.unseen[style])

    def scores_of_tokens(self, tokens: Sequence[str]) -> dict[str, float]:
        """Each style's summed log-likelihood of the tokens that some style was trained on. A token none was trained
        on is no evidence (as in sklearn's and Jurafsky & Martin's naive Bayes): scored, it would add
        ``log(alpha / total)`` and so favour the style with the fewest training tokens, the training mix that the
        uniform priors leave out."""
        known = [w for w in tokens if any(w in self.log_likelihood[style] for style in self.styles)]
        return {style: sum(self._log_p(w, style) for w in known) for style in self.styles}

    def predict(self, captions: Sequence[str]) -> list[str]:
        """The most likely style of each caption (ties go to the earlier style: neutral first)."""
        out = []
        for text in tokenize_captions(captions):
            scores = self.scores_of_tokens(text.split())
            out.append(max(self.styles, key=lambda s: scores[s]))
        return out

    def content_words(self, tokenized: str) -> list[str]:
        return [w for w in tokenized.split() if w not in STOP_WORDS and w not in self.style_words]

    def to_dict(self) -> dict[str, Any]:
        return {
            "styles": list(self.styles),
            "log_likelihood": self.log_likelihood,
            "unseen": self.unseen,
            "style_words": sorted(self.style_words),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StyleClassifier:
        return cls(
            tuple(data["styles"]), dict(data["log_likelihood"]), dict(data["unseen"]), frozenset(data["style_words"])
        )

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> StyleClassifier:
        try:
            return cls.from_dict(parse_json(Path(path).read_text(encoding="utf-8"), path))
        except InputError as error:
            raise InputError(path, f"not a style classifier file ({error.reason})") from None
        except (OSError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise InputError(path, f"not a style classifier file ({error})") from None


def senticap_sentiment_words(path: str | Path) -> dict[str, str]:
    """The sentiment words of SentiCap's adjective-noun pairs (ANPs), with their majority style.

    SentiCap marks both words of each ANP (``word_sentiment``: "beautiful lake" is 1, 1). Only the adjective is taken
    (see :func:`_pair_adjectives`), the word that carries the sentiment: the noun is content ("lake", "bathroom"),
    and as a style word it would count as sentiment evidence and drop out of content matching. A word marked with
    both sentiments is kept only where one has at least three times the other's votes.
    """
    text = read_text(Path(path))  # one line for a missing, UTF-16 ("save it as UTF-8"), Latin-1 or empty file
    try:
        data = parse_json(text, path)
        if not isinstance(data, dict) or "images" not in data:  # else Python's words: "list indices must be ..."
            raise InputError(path, 'expected an object {"images": [{"sentences": [...]}]}')
        images = data["images"]
    except InputError as error:
        raise InputError(path, f"not a SentiCap json ({error.reason})") from None
    except (KeyError, TypeError) as error:
        raise InputError(path, f"not a SentiCap json ({error})") from None
    votes: dict[str, Counter[str]] = {}
    marked = 0
    for style, tokens, marks in _sentiment_sentences(images):
        marked += 1
        for word in _pair_adjectives(tokens, marks):
            votes.setdefault(word.lower(), Counter())[style] += 1
    if not marked:
        raise InputError(path, "not a SentiCap json (no sentence carries a sentiment of 1 or 0)")
    lexicon = {}
    for word, tally in votes.items():
        (top, n), *rest = tally.most_common()
        if not rest or n >= 3 * rest[0][1]:
            lexicon[word] = top
    return lexicon


def _sentiment_sentences(images: object) -> Iterator[tuple[str, list[str], list[Any]]]:
    """(style, tokens, word marks) of each SentiCap sentence whose ``sentiment`` the SentiCap reader reads (1 or "1"
    positive, 0 or "0" negative); anything else in the file is passed over."""
    for image in images if isinstance(images, list) else []:
        sentences = image.get("sentences") if isinstance(image, dict) else None
        for sentence in sentences if isinstance(sentences, list) else []:
            sentiment = sentence.get("sentiment") if isinstance(sentence, dict) else None
            readable = isinstance(sentiment, int | str) and not isinstance(sentiment, bool)  # the reader's types
            style = SENTICAP_SENTIMENTS.get(sentiment) if readable else None
            tokens, marks = (sentence.get(key) for key in ("tokens", "word_sentiment")) if style else (None, None)
            if style and isinstance(tokens, list) and isinstance(marks, list):
                yield style, [str(token) for token in tokens], marks


def _pair_adjectives(tokens: Sequence[str], marks: Sequence[Any]) -> list[str]:
    """The first token of each run of at least two adjacent marked tokens: the pair's adjective ("dirty" in "dirty
    bathroom sink"; a noun compound follows it). A lone marked token is left out: in SentiCap it is as often the
    noun of a pair split by other words ("a good cup of coffee")."""
    flags = [bool(mark) for mark in marks[: len(tokens)]]
    flags += [False] * (len(tokens) + 1 - len(flags))  # unmarked past the marks' end, and after the last token
    return [tokens[i] for i in range(len(tokens)) if flags[i] and flags[i + 1] and not (i and flags[i - 1])]


@dataclass(frozen=True)
class StyleScores:
    style: str
    count: int
    style_accuracy: float | None
    cider_d: float | None
    content_match: float | None
    content_exact: float | None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "style"}


def evaluate_styles(
    generated: Mapping[str, Mapping[str, str]],
    classifier: StyleClassifier,
    references: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    neutral: Mapping[str, str] | None = None,
) -> dict[str, StyleScores]:
    """The style table: ``generated[style][image_id]`` is the caption made when ``style`` was requested.

    ``references[style][image_id]`` (optional) gives CIDEr-D per style; ``neutral[image_id]`` (optional, default
    ``generated["neutral"]``) is what content match compares with. A style the classifier was not trained on
    (neutral, where the training captions are SentiCap's alone) has no style accuracy (None), not 0.
    """
    from captionkit.evaluation.api import score_captions

    neutral = neutral if neutral is not None else generated.get("neutral")
    neutral_tokens = dict(zip(neutral, tokenize_captions(neutral.values()), strict=True)) if neutral else {}
    table = {}
    for style, captions in generated.items():
        ids = list(captions)
        if not ids:
            continue
        accuracy = None
        if style in classifier.styles:  # else every caption would count as wrong, whatever it says
            predicted = classifier.predict([captions[i] for i in ids])
            accuracy = sum(p == style for p in predicted) / len(ids)
        cider = None
        refs = (references or {}).get(style)
        if refs:
            scored = {i: captions[i] for i in ids if refs.get(i)}
            if scored:
                evaluation = score_captions({i: refs[i] for i in scored}, scored, metrics=["CIDEr"], allow_empty=True)
                cider = evaluation.scores["CIDEr"]
        match = exact = None
        shared = [i for i in ids if i in neutral_tokens]
        if shared:
            tokens = dict(zip(shared, tokenize_captions(captions[i] for i in shared), strict=True))
            hits = exact_hits = 0
            for i in shared:
                mine, base = classifier.content_words(tokens[i]), classifier.content_words(neutral_tokens[i])
                hits += not base or len(set(mine) & set(base)) >= 0.5 * len(set(base))
                exact_hits += _unstyled(tokens[i], classifier) == _unstyled(neutral_tokens[i], classifier)
            match, exact = hits / len(shared), exact_hits / len(shared)
        table[style] = StyleScores(style, len(ids), accuracy, cider, match, exact)
    return table


def _unstyled(tokenized: str, classifier: StyleClassifier) -> list[str]:
    """Tokens without style words, "an" read as "a" (a style word changes the article: "a cat" / "an ugly cat")."""
    return ["a" if w == "an" else w for w in tokenized.split() if w not in classifier.style_words]
