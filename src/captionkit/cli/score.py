"""``captionkit score``: COCO caption metrics of candidate captions against references, without models.

Prints one JSON object on stdout (pycocoevalcap's keys plus diversity extras and ``notes``) and a table on stderr.
Exit codes: 0 ok; 1 bad input; 2 a metric that was asked for (``--metrics``) could not be computed here.
This path imports neither torch nor transformers, nor the other commands' modules: the whole command takes about
0.85 s on COCO val2017's 5,000 images.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from captionkit.cli._common import EXIT_OK, EXIT_PARTIAL, fail, without_cyclic_gc
from captionkit.files import write_atomic

_ORDER = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _table(scores: dict[str, Any]) -> str:
    """One row per score; counts (ints) print as integers, scores with four decimals."""
    rows = [(k, scores[k]) for k in _ORDER if k in scores]
    rows += [(k, v) for k, v in scores.items() if k not in _ORDER and isinstance(v, int | float)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(
        f"  {k:<{width}}  {v:10d}" if isinstance(v, int) else f"  {k:<{width}}  {v:10.4f}" for k, v in rows
    )


@without_cyclic_gc
def score(
    refs: Annotated[
        Path, typer.Option("--refs", help="COCO captions JSON, {id: list of captions} JSON or Flickr token file.")
    ],
    cands: Annotated[
        Path, typer.Option("--cands", help='COCO results JSON, {id: caption} JSON or "captionkit caption" JSONL.')
    ],
    metrics: Annotated[
        str | None,
        typer.Option("--metrics", help="Comma-separated: BLEU,METEOR,ROUGE_L,CIDEr,SPICE (default: all but SPICE)."),
    ] = None,
    per_image: Annotated[
        Path | None, typer.Option("--per-image", help="Write per-image scores to this JSON file.")
    ] = None,
    train_captions: Annotated[
        Path | None,
        typer.Option("--train-captions", help="Training references (any --refs format) for copied_from_train."),
    ] = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="Directory of the images, for CLIPScore (named as in --refs).")
    ] = None,
    clip_model: Annotated[
        str, typer.Option("--clip-model", help="CLIP model (hub id or directory) for CLIPScore and RefCLIPScore.")
    ] = "openai/clip-vit-base-patch32",
    meteor: Annotated[
        str, typer.Option("--meteor", help="METEOR engine: python (default) or java (pycocoevalcap's jar).")
    ] = "python",
) -> None:
    """Score candidate captions against reference captions (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE; CLIPScore and
    RefCLIPScore with --images)."""
    from captionkit.errors import InputError
    from captionkit.evaluation.api import java_note, score_captions, split_image_metrics
    from captionkit.evaluation.readers import read_candidates, read_references

    try:
        note = java_note(metrics, meteor)
        if note is not None:
            print(f"captionkit: note: {note}", file=sys.stderr)
        text_metrics, wants_clip = split_image_metrics(metrics)
        if wants_clip and images is None:
            raise InputError("--images", "CLIPScore needs the directory of the images")
        references = read_references(refs)
        candidates = references.match(read_candidates(cands), str(cands))
        train = None
        if train_captions is not None:
            train = [c for caps in read_references(train_captions).captions.values() for c in caps]
        evaluation = score_captions(
            references.captions,
            candidates,
            text_metrics,
            train,
            ref_source=str(refs),
            cand_source=str(cands),
            meteor=meteor,
        )
        if wants_clip and images is not None:
            _add_clip_scores(evaluation, references, candidates, images, clip_model)
        if per_image is not None:
            payload = {
                "overall": {k: _json_value(v) for k, v in evaluation.scores.items()},
                "per_image": {i: {k: _json_value(v) for k, v in s.items()} for i, s in evaluation.per_image.items()},
            }
            try:
                write_atomic(per_image, json.dumps(payload, indent=1) + "\n")
            except OSError as error:
                raise InputError(per_image, f"cannot write: {error.strerror or error}") from None
    except InputError as error:
        fail(str(error))
    result = {k: _json_value(v) for k, v in evaluation.to_dict().items()}
    print(json.dumps(result))
    print(_table(evaluation.scores), file=sys.stderr)
    for note in evaluation.notes:
        print(f"captionkit: note: {note}", file=sys.stderr)
    raise typer.Exit(EXIT_PARTIAL if evaluation.missing else EXIT_OK)


def _add_clip_scores(evaluation: Any, references: Any, candidates: dict[str, str], images: Path, source: str) -> None:
    """CLIPScore and RefCLIPScore of every candidate on its image, into the corpus and per-image scores."""
    from captionkit.evaluation.clipscore import ClipScorer, score_image_files

    files = references.image_files(images)
    corpus, per_image = score_image_files(ClipScorer(source), files, candidates, references.captions)
    evaluation.scores.update(corpus)
    for image_id, scores in per_image.items():
        evaluation.per_image[image_id].update(scores)
