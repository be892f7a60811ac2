"""``captionkit score`` without typer: the command's work as one function, and a parser for its well-formed
command lines.

typer 0.29 imports pydantic and builds a validator for every option: about 0.15 s of start-up, a fifth of the whole
command on COCO val2017's 5,000 images. :func:`captionkit.cli.main` therefore hands a ``score`` command line that
:func:`parse_score_options` understands straight to :func:`run_score`; anything else (``--help``, a mistyped,
repeated or missing option) goes through the typer command in :mod:`captionkit.cli.score`, which calls the same
:func:`run_score` and gives typer's help and usage errors. ``tests/test_evaluation_cli.py`` checks that
:data:`SCORE_OPTIONS` and the defaults here match the typer command's options.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from captionkit.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    check_not_overwriting,
    error_line,
    fail,
    fail_writing,
    without_cyclic_gc,
)
from captionkit.files import check_output_file, url_of, write_atomic
from captionkit.wording import plural

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_METEOR = "python"

#: The options of ``captionkit score``: flag -> (keyword of :func:`run_score`, whether its value is a path).
SCORE_OPTIONS: dict[str, tuple[str, bool]] = {
    "--refs": ("refs", True),
    "--cands": ("cands", True),
    "--metrics": ("metrics", False),
    "--per-image": ("per_image", True),
    "--train-captions": ("train_captions", True),
    "--images": ("images", True),
    "--clip-model": ("clip_model", False),
    "--meteor": ("meteor", False),
}
REQUIRED_OPTIONS = ("refs", "cands")

_ORDER = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE", "perplexity")


def parse_score_options(args: Sequence[str]) -> dict[str, Any] | None:
    """The keywords of :func:`run_score` from ``score``'s arguments (after the command name), or ``None`` when they
    are anything but ``--flag value`` / ``--flag=value`` pairs of known flags, each at most once, the required ones
    present and no value empty or starting with ``-`` (typer's parser then decides, and words any error)."""
    options: dict[str, Any] = {}
    position = 0
    while position < len(args):
        flag, equals, value = args[position].partition("=")
        if flag not in SCORE_OPTIONS:
            return None
        if not equals:
            position += 1
            if position == len(args):
                return None
            value = args[position]
        name, is_path = SCORE_OPTIONS[flag]
        if name in options or not value or value.startswith("-"):
            return None
        options[name] = Path(value) if is_path else value
        position += 1
    if any(name not in options for name in REQUIRED_OPTIONS):
        return None
    return options


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def score_table(scores: dict[str, Any]) -> str:
    """The table ``score`` and ``evaluate`` print on stderr: one row per score, the COCO metrics first; counts (ints)
    print as integers, scores with four decimals (anything else, such as notes, is left out)."""
    rows = [(k, scores[k]) for k in _ORDER if k in scores]
    rows += [(k, v) for k, v in scores.items() if k not in _ORDER and isinstance(v, int | float)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(
        f"  {k:<{width}}  {v:10d}" if isinstance(v, int) else f"  {k:<{width}}  {v:10.4f}" for k, v in rows
    )


def check_meteor_option(meteor: str, metrics: str | None) -> None:
    """Refuse a METEOR engine (``--meteor java``) for ``metrics`` that leave METEOR out, where it was ignored without
    a word (score and evaluate)."""
    from captionkit.errors import InputError
    from captionkit.evaluation.api import parse_metrics
    from captionkit.evaluation.meteor import check_engine

    if check_engine(meteor, "--meteor") != DEFAULT_METEOR and "METEOR" not in parse_metrics(metrics)[0]:
        raise InputError("--meteor", "only with --metrics naming METEOR: nothing else reads it")


@without_cyclic_gc
def run_score(
    refs: Path,
    cands: Path,
    metrics: str | None = None,
    per_image: Path | None = None,
    train_captions: Path | None = None,
    images: Path | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    meteor: str = DEFAULT_METEOR,
) -> int:
    """``captionkit score``: the JSON result on stdout, the table and notes on stderr; returns the exit code (bad
    input prints one line and exits 1 through :func:`~captionkit.cli._common.fail`).

    As ``evaluate`` scores a model's captions: an empty caption is a caption (it scores 0 on its image), and an
    image that failed to caption (an error record of ``captionkit caption``) has none, so it is left out of the
    scores, counted (``failed_images``) and said on stderr, and the exit code is 2: the figures are partial."""
    if "numpy" not in sys.modules:
        # Scoring multiplies no matrices; OpenBLAS would start a thread per core at numpy's import, which spins and
        # doubles the import's CPU time (0.15 s instead of 0.07 s) on a machine whose cores are busy anyway.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from captionkit.errors import InputError
    from captionkit.evaluation.api import java_note, score_captions, split_image_metrics
    from captionkit.evaluation.readers import read_references

    try:
        check_meteor_option(meteor, metrics)
        note = java_note(metrics, meteor)
        if note is not None:
            print(f"captionkit: note: {note}", file=sys.stderr)
        text_metrics, wants_clip = split_image_metrics(metrics)
        clip_flags = (("--images", images is not None), ("--clip-model", clip_model != DEFAULT_CLIP_MODEL))
        unused = [flag for flag, given in clip_flags if given and not wants_clip]
        if unused:  # only CLIPScore reads them: they were ignored without a word, and no CLIPScore came
            raise InputError(unused[0], "only with --metrics naming CLIPScore: nothing else reads it")
        if wants_clip and images is None:
            raise InputError("--images", "CLIPScore needs the directory of the images")
        if wants_clip and images is not None and not images.is_dir():
            reason = f"{images} is not a directory" if images.exists() else f"{images}: no such directory"
            raise InputError("--images", reason)
        if per_image is not None:  # before the scoring, which a path that cannot be written would waste
            check_output_file(per_image, "--per-image")
        check_not_overwriting([("--per-image", per_image)], [refs, cands, train_captions])
        for flag, given in (("--refs", refs), ("--cands", cands), ("--train-captions", train_captions)):
            url = url_of(given) if given is not None else None
            if url is not None:
                raise InputError(flag, f"{url}: a URL: captionkit reads local files only (download it first)")
        references = read_references(refs)
        failed: dict[str, str] = {}  # the images that failed to caption, by name -> their error
        candidates = references.match(_read_candidates(cands, failed), str(cands))
        failed = {name: error for name, error in failed.items() if (references.resolve(name) or name) not in candidates}
        if failed and not candidates:
            raise InputError(
                cands, f"not one image has a caption: {plural(len(failed), 'image')} {_failed_images(failed)}"
            )
        failed_ids = {references.resolve(name) or name for name in failed}
        scored_references, left_out = _of_candidates(references.captions, candidates, failed_ids)
        train = None
        if train_captions is not None:
            train = [c for caps in read_references(train_captions).captions.values() for c in caps]
        evaluation = score_captions(
            scored_references,
            candidates,
            text_metrics,
            train,
            ref_source=str(refs),
            cand_source=str(cands),
            allow_empty=True,
            meteor=meteor,
        )
        if failed:
            evaluation.scores["failed_images"] = len(failed)
        if wants_clip and images is not None:
            _add_clip_scores(evaluation, references, candidates, images, clip_model)
        if per_image is not None:
            payload = {
                "overall": {k: _json_value(v) for k, v in evaluation.scores.items()},
                "per_image": {i: {k: _json_value(v) for k, v in s.items()} for i, s in evaluation.per_image.items()},
            }
            try:
                per_image.parent.mkdir(parents=True, exist_ok=True)  # as the other commands make their outputs' folders
                write_atomic(per_image, json.dumps(payload, indent=1) + "\n")
            except OSError as error:  # named by its flag, as every output error of score and evaluate is
                fail_writing(per_image, error, "--per-image")
    except InputError as error:
        fail(error_line(error))
    except KeyboardInterrupt:  # Python's answer is a traceback from wherever the scoring was
        written = f"; {per_image} not written" if per_image is not None else ""
        print(f"captionkit: interrupted: no scores printed{written}", file=sys.stderr)
        return EXIT_INTERRUPTED
    result = {k: _json_value(v) for k, v in evaluation.to_dict().items()}
    print(json.dumps(result))
    print(score_table(evaluation.scores), file=sys.stderr)
    for note in [*evaluation.notes, *left_out, *_empty_note(candidates)]:
        print(f"captionkit: note: {note}", file=sys.stderr)
    if failed:
        total = len(failed) + len(candidates)
        print(
            f"captionkit: {len(failed):,} of {total:,} images in {cands} {_failed_images(failed)}, left out of the "
            f"scores, which are over the other {plural(len(candidates), 'image')}",
            file=sys.stderr,
        )
    return EXIT_PARTIAL if evaluation.missing or failed else EXIT_OK


def _read_candidates(path: Path, failed: dict[str, str]) -> dict[str, str]:
    """The captions of ``--cands`` in any format it may have (Parquet too, read here: the evaluation layer does not
    import the captioning job's files); the images that failed to caption go to ``failed``."""
    from captionkit.evaluation.readers import candidates_from_records, read_candidates

    if not _is_parquet(path):
        return read_candidates(path, failed)
    from captionkit.jobs.parquet_records import read_parquet_records

    rows = ((f"row {number}", record) for number, record in enumerate(read_parquet_records(path), start=1))
    return candidates_from_records(rows, path, failed)


def _is_parquet(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts as Parquet does (whatever its suffix)."""
    try:
        if not path.is_file():
            return False
        with path.open("rb") as handle:
            return handle.read(4) == b"PAR1"
    except OSError:
        return False  # reading it as text names the problem


def _failed_images(failed: dict[str, str]) -> str:
    """The words after a count of failed images: "failed to caption (bad.jpg: truncated image)"."""
    name, error = next(iter(failed.items()))
    example = f"e.g. {name}: {error}" if len(failed) > 1 else f"{name}: {error}"
    return f"failed to caption ({example})"


def _empty_note(candidates: dict[str, str]) -> list[str]:
    """A note counting the empty captions, which are scored (0 on their images) as ``evaluate`` scores them."""
    empty = sum(1 for caption in candidates.values() if not caption.strip())
    if not empty:
        return []
    return [
        f"{empty} of the {len(candidates)} candidate captions {'is' if empty == 1 else 'are'} empty, scored as "
        "captions (0 on their images), as evaluate scores a model's empty captions"
    ]


def _of_candidates(
    references: dict[str, list[str]], candidates: dict[str, str], failed: Collection[str] = ()
) -> tuple[dict[str, list[str]], list[str]]:
    """The references of the images that have a candidate, as pycocoevalcap scores the images of its results (a
    Karpathy test split against all of captions_val2014.json), and a note when that leaves images out (but the
    ``failed`` ones, which have their own line). A candidate without references stays an error (scoring names it),
    and so do candidates that match no image at all."""
    kept = {image_id: captions for image_id, captions in references.items() if image_id in candidates}
    if len(kept) == len(references) or not kept:
        return references, []
    left_out = sum(1 for image_id in references if image_id not in candidates and image_id not in failed)
    if not left_out:
        return kept, []
    note = (
        f"scored the {plural(len(kept), 'image')} with a candidate caption; {left_out:,} of the {len(references):,} "
        "reference images have none and are left out, as pycocoevalcap leaves them out"
    )
    return kept, [note]


def _add_clip_scores(evaluation: Any, references: Any, candidates: dict[str, str], images: Path, source: str) -> None:
    """CLIPScore and RefCLIPScore of every candidate on its image, into the corpus and per-image scores."""
    from captionkit.evaluation.clipscore import load_clip_scorer, score_image_files

    files = references.image_files(images)
    corpus, per_image = score_image_files(load_clip_scorer(source), files, candidates, references.captions)
    evaluation.scores.update(corpus)
    for image_id, scores in per_image.items():
        evaluation.per_image[image_id].update(scores)
