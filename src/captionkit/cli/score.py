"""``captionkit score``: COCO caption metrics of candidate captions against references, without models.

Prints one JSON object on stdout (pycocoevalcap's keys plus diversity extras and ``notes``) and a table on stderr.
Exit codes: 0 ok; 1 bad input; 2 partial: a metric that was asked for (``--metrics``) could not be computed here, or
images of ``--cands`` failed to caption (``captionkit caption``'s error records) and were left out of the scores.
This module declares the options for typer (help, usage errors); the work is :func:`captionkit.cli.scoring.run_score`,
which well-formed command lines reach without typer (see :mod:`captionkit.cli.scoring`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from captionkit.cli.scoring import DEFAULT_CLIP_MODEL, DEFAULT_METEOR, run_score


def score(
    refs: Annotated[
        Path,
        typer.Option(
            "--refs",
            help="COCO captions JSON, Karpathy split or SentiCap JSON, {id: list of captions} JSON, Flickr token file, "
            "or a CSV (Kaggle captions.txt) or JSON lines with image and caption.",
        ),
    ],
    cands: Annotated[
        Path,
        typer.Option(
            "--cands",
            help='COCO results JSON, {id: caption} JSON or what "captionkit caption" writes (JSONL, JSON, CSV, '
            "Parquet; its failed images are left out, with exit code 2).",
        ),
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
    ] = DEFAULT_CLIP_MODEL,
    meteor: Annotated[
        str, typer.Option("--meteor", help="METEOR engine: python (default) or java (pycocoevalcap's jar).")
    ] = DEFAULT_METEOR,
) -> None:
    """Score candidate captions against reference captions (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE; CLIPScore and
    RefCLIPScore with --images)."""
    raise typer.Exit(run_score(refs, cands, metrics, per_image, train_captions, images, clip_model, meteor))
