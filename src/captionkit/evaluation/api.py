"""Scoring captions against references: the COCO caption metrics under pycocoevalcap's names, plus diversity.

>>> refs = {"1": ["A cat sits on a mat.", "A cat on a rug."], "2": ["A dog runs.", "A brown dog running."]}
>>> result = evaluate_captions(refs, {"1": "A cat on a mat.", "2": "A dog runs."}, metrics=("BLEU", "CIDEr"))
>>> sorted(k for k in result if k.startswith(("Bleu", "CIDEr")))
['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'CIDEr']

Images follow the order of ``refs``; captions are tokenized as pycocoevalcap does (references and candidates in two
batches, in that order), so the numbers equal pycocoevalcap's on the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib import import_module
from itertools import chain, repeat
from typing import Any

from captionkit.errors import InputError
from captionkit.evaluation import forked
from captionkit.evaluation.diversity import caption_statistics, corpus_statistics, repeated_captions
from captionkit.evaluation.external import MetricUnavailable
from captionkit.evaluation.tokenize import tokenize_captions
from captionkit.wording import plural

#: Captions are cut to this many tokens after tokenization (no real caption comes near; an absurdly long one would
#: otherwise cost minutes and gigabytes in the tokenizer, the n-gram tables and ROUGE-L's quadratic LCS) ...
MAX_CAPTION_TOKENS = 1000
#: ... and only their first this many characters are tokenized (50 per token: far more than any real token).
MAX_CAPTION_CHARS = 50 * MAX_CAPTION_TOKENS
#: From this many references on, captions are tokenized in a forked process (:mod:`.forked`) while this one loads
#: numpy; fewer take less time than starting it.
FORK_MIN_REFERENCES = 5000
#: Metric names accepted in ``metrics`` (case-insensitive; "BLEU" gives Bleu_1..Bleu_4).
METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE", "CLIPScore")
#: Metrics of captions and their images (a CLIP model, see :mod:`.clipscore`): computed by whoever holds the images.
IMAGE_METRICS = ("CLIPScore",)
#: The default: the COCO metrics but SPICE (METEOR only where the ``captionkit[meteor]`` extra is installed).
DEFAULT_METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr")
_ALIASES = {"bleu": "BLEU", "meteor": "METEOR", "rouge_l": "ROUGE_L", "rouge": "ROUGE_L", "rougel": "ROUGE_L",
            "cider": "CIDEr", "cider-d": "CIDEr", "ciderd": "CIDEr", "spice": "SPICE", "clipscore": "CLIPScore",
            "clip-s": "CLIPScore", "refclipscore": "CLIPScore", "refclip-s": "CLIPScore"}  # fmt: skip


@dataclass
class Evaluation:
    """Scores of a set of candidates.

    ``scores``: corpus-level metrics with pycocoevalcap's keys (``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``,
    ``CIDEr``, ``SPICE``) and the extras (``distinct_1``, ``length_mean``, ...; see :mod:`.diversity`).
    ``per_image``: image id -> metric -> score. ``notes``: one-line remarks (a metric left out, a caption given to
    many images). ``missing``: requested metrics that could not be computed here.
    """

    scores: dict[str, float]
    per_image: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The flat result: scores, plus ``notes`` when there are any."""
        out: dict[str, Any] = dict(self.scores)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def parse_metrics(metrics: str | Iterable[str] | None) -> tuple[tuple[str, ...], bool]:
    """Canonical metric names and whether they were asked for explicitly (``None`` means the default set)."""
    if metrics is None:
        return DEFAULT_METRICS, False
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    chosen: list[str] = []
    for name in names:
        key = name.strip()
        if not key:
            continue
        canonical = _ALIASES.get(key.lower())
        if canonical is None:
            raise InputError("metrics", f"unknown metric {key!r} (known: {', '.join(METRICS)})")
        if canonical not in chosen:
            chosen.append(canonical)
    if not chosen:
        raise InputError("metrics", f"names no metric (known: {', '.join(METRICS)})")
    return tuple(chosen), True


def split_image_metrics(metrics: str | Iterable[str] | None) -> tuple[str | Iterable[str] | None, bool]:
    """The metrics for :func:`score_captions` and whether CLIPScore was asked for too (the caller, who holds the
    images, computes it). With CLIPScore alone, CIDEr-D is scored as well: reports sort images by it."""
    chosen, _ = parse_metrics(metrics)
    if not any(name in chosen for name in IMAGE_METRICS):
        return metrics, False
    return [name for name in chosen if name not in IMAGE_METRICS] or ["CIDEr"], True


def java_note(metrics: str | Iterable[str] | None, meteor: str = "python") -> str | None:
    """A one-line note when ``metrics`` will start Java here (METEOR with ``meteor="java"`` where Java is
    installed, SPICE where Java and its jar are): it costs seconds the other metrics do not, so say how to leave it
    out. ``None`` when nothing runs Java."""
    from captionkit.evaluation.meteor import check_engine, meteor_unavailable_reason

    chosen, _ = parse_metrics(metrics)
    java = [name for name in ("METEOR", "SPICE") if name in chosen]
    if "METEOR" in java and (check_engine(meteor) != "java" or meteor_unavailable_reason("java") is not None):
        java.remove("METEOR")  # in Python, or left out with its own note
    if "SPICE" in java:
        from captionkit.evaluation.spice import spice_unavailable_reason  # urllib's import only where SPICE is asked

        if spice_unavailable_reason() is not None:
            java.remove("SPICE")  # nothing to start: left out with its own note, which says why
    if not java:
        return None
    rest = ",".join(name for name in chosen if name not in java) or "BLEU,ROUGE_L,CIDEr"
    runs, them = ("runs", "it") if len(java) == 1 else ("run", "them")
    return f"{' and '.join(java)} {runs} in Java (seconds more than the others); --metrics {rest} leaves {them} out"


def _examples(names: list[str], limit: int = 3) -> str:
    return ", ".join(repr(n) for n in names[:limit]) + (", ..." if len(names) > limit else "")


def _check(
    refs: Mapping[str, Sequence[str]], cands: Mapping[str, str], ref_source: str, cand_source: str, allow_empty: bool
) -> None:
    # A list of captions (the usual slip from Python) would otherwise fail with "'list' object has no attribute".
    for source, given, shape in ((ref_source, refs, "a list of captions"), (cand_source, cands, "its caption")):
        if not isinstance(given, Mapping):
            raise InputError(source, f"must map each image id to {shape} (a dict), got a {type(given).__name__}")
    if not refs:
        raise InputError(ref_source, "no reference captions")
    if not cands:
        raise InputError(cand_source, "no candidate captions")
    # The common case checked at C speed (lists of non-blank strings); image by image only to find what is wrong.
    lists = list(refs.values())
    flat = list(chain.from_iterable(lists)) if set(map(type, lists)) == {list} and all(lists) else None
    if flat is None or set(map(type, flat)) != {str} or not all(map(str.strip, flat)):
        for image_id, captions in refs.items():
            if isinstance(captions, str) or not isinstance(captions, Sequence):
                raise InputError(ref_source, f"image {image_id!r}: references must be a list of captions")
            if not captions:
                raise InputError(ref_source, f"image {image_id!r} has no reference captions")
            if not all(isinstance(c, str) and c.strip() for c in captions):
                raise InputError(ref_source, f"image {image_id!r}: empty or non-text reference caption")
    captions = list(cands.values())
    if set(map(type, captions)) != {str} or not (allow_empty or all(map(str.strip, captions))):
        for image_id, caption in cands.items():
            if not isinstance(caption, str):
                raise InputError(cand_source, f"image {image_id!r}: caption must be a string")
            if not caption.strip() and not allow_empty:
                raise InputError(cand_source, f"image {image_id!r}: empty caption")
    if cands.keys() == refs.keys():
        return
    unknown = [i for i in cands if i not in refs]
    if unknown:
        raise InputError(
            cand_source,
            f"{plural(len(unknown), 'candidate image')} without references in {ref_source}, e.g. {_examples(unknown)}",
        )
    uncovered = [i for i in refs if i not in cands]
    if uncovered:
        raise InputError(
            cand_source,
            f"{len(uncovered)} of {len(refs)} reference images have no candidate caption, e.g. {_examples(uncovered)}",
        )


def score_captions(
    refs: Mapping[str, Sequence[str]],
    cands: Mapping[str, str],
    metrics: str | Iterable[str] | None = None,
    train_captions: Iterable[str] | None = None,
    *,
    ref_source: str = "references",
    cand_source: str = "candidates",
    allow_empty: bool = False,
    meteor: str = "python",
) -> Evaluation:
    """Score one candidate caption per image against that image's references.

    ``refs`` and ``cands`` are raw captions keyed by the same image ids; every image needs both. ``metrics`` picks
    from :data:`METRICS` (a list or a comma-separated string; ``None`` = :data:`DEFAULT_METRICS`).
    ``train_captions`` (raw training captions) add ``copied_from_train``. Bad input raises
    :class:`~captionkit.errors.InputError` naming ``ref_source`` / ``cand_source``. An empty candidate is bad
    input in a results file, but a fair (zero-scoring) output of a model: ``allow_empty`` scores it. ``meteor``:
    the METEOR engine, ``"python"`` or ``"java"`` (pycocoevalcap's jar; same scores).
    """
    from captionkit.evaluation.meteor import check_engine

    check_engine(meteor)
    chosen, explicit = parse_metrics(metrics)
    _check(refs, cands, ref_source, cand_source, allow_empty)
    ids = list(refs)
    reference_captions = [c for i in ids for c in refs[i]]
    tokenized: Callable[[], tuple[tuple[list[str], int], tuple[list[str], int]]] = partial(
        _tokenize_both, reference_captions, [cands[i] for i in ids]
    )
    if len(reference_captions) >= FORK_MIN_REFERENCES:  # in a child process, while this one loads numpy
        tokenized = forked.start(tokenized)
        if "BLEU" in chosen or "CIDEr" in chosen:
            import_module("numpy")
    (flat, cut_references), (candidates, cut_candidates) = tokenized()
    references: list[list[str]] = []
    start = 0
    for i in ids:
        references.append(flat[start : start + len(refs[i])])
        start += len(refs[i])

    scores: dict[str, float] = {}
    columns: dict[str, list[float]] = {}  # metric -> its score of each image, in the order of ids
    evaluation = Evaluation(scores, {})
    for cut, source in ((cut_candidates, cand_source), (cut_references, ref_source)):
        if cut:
            evaluation.notes.append(
                f"{source}: {plural(cut, 'caption')} over {MAX_CAPTION_TOKENS} tokens or {MAX_CAPTION_CHARS} "
                f"characters {'was' if cut == 1 else 'were'} cut to {MAX_CAPTION_TOKENS} tokens"
            )

    def record(name: str, corpus: float, images: Sequence[float]) -> None:
        if len(images) != len(ids):
            raise ValueError(f"{name}: {len(images)} scores for {len(ids)} images")
        scores[name] = float(corpus)
        columns[name] = list(map(float, images))

    corpus = None
    if "BLEU" in chosen or "CIDEr" in chosen:
        from captionkit.evaluation.bleu import bleu_from_corpus
        from captionkit.evaluation.cider import cider_from_corpus
        from captionkit.evaluation.corpus import Corpus

        corpus = Corpus(candidates, references)
        if "BLEU" in chosen:
            bleu = bleu_from_corpus(corpus)
            for k, per_image in enumerate(zip(*bleu.per_image, strict=True)):
                record(f"Bleu_{k + 1}", bleu.corpus[k], per_image)
    if "METEOR" in chosen:
        from captionkit.evaluation.meteor import meteor as run_meteor

        _run_external(evaluation, "METEOR", explicit, lambda: run_meteor(candidates, references, meteor), record)
    if "ROUGE_L" in chosen:
        from captionkit.evaluation.rouge import rouge_l, rouge_l_from_corpus

        # With the corpus's word ids at hand, all pairs at once in numpy (3x faster); the same numbers.
        rouge = rouge_l_from_corpus(corpus) if corpus is not None else rouge_l(candidates, references)
        record("ROUGE_L", rouge.mean, rouge.per_image)
    if "CIDEr" in chosen and corpus is not None:
        cider = cider_from_corpus(corpus).tolist()
        record("CIDEr", sum(cider) / len(cider), cider)
    if "SPICE" in chosen:
        from captionkit.evaluation.spice import spice

        _run_external(evaluation, "SPICE", True, lambda: spice(candidates, references, ids), record)

    rows = zip(*columns.values(), strict=True) if columns else repeat((), len(ids))
    evaluation.per_image.update((i, dict(zip(columns, row, strict=True))) for i, row in zip(ids, rows, strict=True))
    for name in IMAGE_METRICS:
        if name in chosen:
            evaluation.notes.append(f"{name} left out: it needs the images and a CLIP model (evaluate --clip-model)")
            evaluation.missing.append(name)

    train = tokenize_captions(train_captions) if train_captions is not None else None
    if corpus is not None:
        scores.update(corpus_statistics(corpus, candidates, train))
    else:
        scores.update(caption_statistics(candidates, train))
    scores["num_images"] = len(ids)
    # Counted as the metrics see them (tokenized: "A dog." and "a dog" are one caption), quoted as first written.
    written: dict[str, str] = {}
    for tokens, image_id in zip(candidates, ids, strict=True):
        written.setdefault(tokens, cands[image_id])
    for caption, count in repeated_captions(candidates)[:3]:
        evaluation.notes.append(
            f"the caption {written[caption]!r} was given to {count:,} of {len(ids):,} images ({count / len(ids):.0%})"
        )
    return evaluation


def _tokenize_both(references: list[str], candidates: list[str]) -> tuple[tuple[list[str], int], tuple[list[str], int]]:
    """:func:`_tokenize_capped` of the references, then of the candidates: two batches, as pycocoevalcap has them."""
    return _tokenize_capped(references), _tokenize_capped(candidates)


def _tokenize_capped(captions: list[str]) -> tuple[list[str], int]:
    """Captions tokenized (tokens joined by single spaces) and cut to :data:`MAX_CAPTION_TOKENS`, reading at most
    :data:`MAX_CAPTION_CHARS` of each; and how many were cut."""
    tokenized = tokenize_captions(caption[:MAX_CAPTION_CHARS] for caption in captions)
    # Cutting needs MAX_CAPTION_TOKENS spaces, so as many characters: real captions are far shorter, and two
    # passes at C speed show that none needs it.
    short_texts = max(map(len, captions), default=0) <= MAX_CAPTION_CHARS
    if short_texts and max(map(len, tokenized), default=0) < MAX_CAPTION_TOKENS:
        return tokenized, 0
    cut = 0
    for index, (caption, tokens) in enumerate(zip(captions, tokenized, strict=True)):
        if tokens.count(" ") >= MAX_CAPTION_TOKENS:
            tokenized[index] = " ".join(tokens.split(" ", MAX_CAPTION_TOKENS)[:MAX_CAPTION_TOKENS])
        cut += tokens.count(" ") >= MAX_CAPTION_TOKENS or len(caption) > MAX_CAPTION_CHARS
    return tokenized, cut


def _run_external(evaluation: Evaluation, name: str, explicit: bool, run: Any, record: Any) -> None:
    try:
        corpus, images = run()
    except MetricUnavailable as error:
        evaluation.notes.append(f"{name} left out: {error}")
        if explicit:
            evaluation.missing.append(name)
        return
    record(name, corpus, images)


def evaluate_captions(
    refs: Mapping[str, Sequence[str]],
    cands: Mapping[str, str],
    metrics: str | Iterable[str] | None = None,
    train_captions: Iterable[str] | None = None,
    allow_empty: bool = False,
    meteor: str = "python",
) -> dict[str, Any]:
    """The flat result of :func:`score_captions`: pycocoevalcap's keys, the extras, and ``notes`` if any.

    Per-image scores: use :func:`score_captions` and its ``per_image``.
    """
    return score_captions(refs, cands, metrics, train_captions, allow_empty=allow_empty, meteor=meteor).to_dict()
