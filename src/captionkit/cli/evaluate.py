"""``captionkit evaluate``: caption a dataset split with a model and score it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from captionkit.cli._common import (
    DTYPE_HELP,
    EXIT_OK,
    EXIT_PARTIAL,
    decoding_flags,
    decoding_help,
    error_line,
    fail,
    progress_bar,
    quiet_libraries,
)
from captionkit.files import write_atomic

if TYPE_CHECKING:
    from captionkit.data.records import CaptionRecord
    from captionkit.evaluation.clipscore import ClipScorer
    from captionkit.trained_on import TrainedOn


def evaluate(
    model: Annotated[str, typer.Option(help="Checkpoint directory or Hugging Face hub id.")],
    data: Annotated[str, typer.Option(help="Dataset: a file or directory captionkit reads (COCO, Flickr, CSV...).")],
    split: Annotated[
        str | None,
        typer.Option(
            help="Split to evaluate (train, val, test, or all; default: test, or all of data without a test split). "
            "Data without split labels is split as the model's training run split it, when its train_config.json "
            "is there."
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Directory for results.jsonl and metrics.json.")] = None,
    metrics: Annotated[str | None, typer.Option(help="Comma-separated metrics (default: the COCO set).")] = None,
    beams: Annotated[int | None, typer.Option(help=decoding_help("num_beams"))] = None,
    max_length: Annotated[int | None, typer.Option(help=decoding_help("max_new_tokens"))] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 16,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "fp32",
    styles: Annotated[
        bool, typer.Option("--styles", help="Caption in every style the model writes; print the style table.")
    ] = False,
    lexicon: Annotated[
        Path | None, typer.Option(help="SentiCap json whose marked sentiment words weigh more in the style classifier.")
    ] = None,
    clip_model: Annotated[
        str,
        typer.Option(help="CLIP model (hub id or directory) for --metrics ...,CLIPScore (CLIPScore, RefCLIPScore)."),
    ] = "openai/clip-vit-base-patch32",
    report: Annotated[
        Path | None,
        typer.Option(help="Write a self-contained HTML page: each image, caption, references, scores, worst first."),
    ] = None,
    meteor: Annotated[
        str, typer.Option(help="METEOR engine: python (default) or java (pycocoevalcap's jar).")
    ] = "python",
) -> None:
    """Caption every image of a split, score against its references; metrics JSON on stdout.

    With --styles: caption each image in each style the model was trained to write and report, per style, style
    accuracy (a naive Bayes sentiment classifier trained on the data's train-split captions), CIDEr-D against that
    style's references, and content match with the model's neutral caption.
    """
    quiet_libraries()
    from captionkit.api import Captioner
    from captionkit.data.sources import load_records
    from captionkit.data.splits import evaluation_split
    from captionkit.errors import CaptionkitError
    from captionkit.evaluation.api import java_note
    from captionkit.model_evaluation import evaluate_model, evaluate_model_styles
    from captionkit.report import write_evaluation_report
    from captionkit.trained_on import TrainedOn

    if batch_size < 1:
        fail(f"--batch-size: must be at least 1, got {batch_size}")
    if styles and report is not None:
        fail("--report: not with --styles (the style table goes to stderr, and to styles.json with --output)")
    try:
        decoding = decoding_flags(beams=beams, max_length=max_length).config
        trained = TrainedOn.read(model)
        records = _split_as_trained(load_records(data), trained, data)
        chosen, which = evaluation_split(records, split, data)
        print(f"captionkit: evaluating {which} of {data}", file=sys.stderr)
        if trained is not None:
            chosen = trained.captions(chosen)
            print(f"captionkit: data: {trained.describe()}", file=sys.stderr)
        train_captions = [r.caption for r in records if r.split == "train"]
        if styles:
            classifier = _style_classifier(records, data, lexicon)
        captioner = Captioner.from_pretrained(model, device=device, dtype=dtype)
        if styles:
            with progress_bar("styles", len({r.image_id for r in chosen})) as advance:
                table = evaluate_model_styles(captioner, chosen, classifier, decoding, None, batch_size, advance)
            _print_style_table(table)
            if output is not None:
                output.mkdir(parents=True, exist_ok=True)
                write_atomic(output / "styles.json", json.dumps(table, indent=2) + "\n")
            print(json.dumps(table))
            raise typer.Exit(EXIT_PARTIAL if table["failed_images"] else EXIT_OK)
        note = java_note(metrics, meteor)
        if note is not None:
            print(f"captionkit: note: {note}", file=sys.stderr)
        clip = _clip_scorer(metrics, clip_model, device)
        with progress_bar("evaluating", len({r.image_id for r in chosen})) as advance:
            result = evaluate_model(
                captioner,
                chosen,
                decoding,
                metrics,
                train_captions or None,
                batch_size,
                advance,
                clip,
                max_length=trained.max_length if trained is not None else None,
                meteor=meteor,
            )
    except CaptionkitError as error:
        fail(error_line(error))
    if report is not None:
        try:
            write_evaluation_report(report, result.results, result.metrics)
        except OSError as error:
            fail(f"{report}: cannot write ({error.strerror or error})")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.results)
        write_atomic(output / "results.jsonl", lines)
        write_atomic(output / "metrics.json", json.dumps(result.metrics, indent=2) + "\n")
    print(json.dumps(result.metrics))
    for figure, over in result.metrics["computed_over"].items():
        print(f"captionkit: {figure}: {over}", file=sys.stderr)
    if result.metrics["failed_images"]:
        print(f"{result.metrics['failed_images']} images could not be read", file=sys.stderr)
    raise typer.Exit(EXIT_PARTIAL if result.metrics["failed_images"] else EXIT_OK)


def _clip_scorer(metrics: str | None, source: str, device: str | None) -> ClipScorer | None:
    """The CLIP model when --metrics names CLIPScore (loaded before captioning, so a bad --clip-model fails fast)."""
    from captionkit.evaluation import parse_metrics
    from captionkit.evaluation.clipscore import ClipScorer

    return ClipScorer(source, device) if "CLIPScore" in parse_metrics(metrics)[0] else None


def _style_classifier(records: list, data: str, lexicon: Path | None) -> object:
    from captionkit.errors import InputError
    from captionkit.evaluation.style import StyleClassifier, senticap_sentiment_words

    train = [(r.caption, r.style) for r in records if r.split in (None, "train")]
    if len({style for _, style in train}) < 2:
        raise InputError(data, "--styles trains its style classifier on the train-split captions: they hold one style")
    return StyleClassifier.fit(train, lexicon=senticap_sentiment_words(lexicon) if lexicon else None)


def _split_as_trained(records: list[CaptionRecord], trained: TrainedOn | None, data: str) -> list[CaptionRecord]:
    """Data without split labels, split the way the model's training run split it (the seeded
    ``data.val_fraction`` of the images held out), so ``--split val`` scores the images that run never trained on."""
    if trained is None:
        return records
    split = trained.split(records)
    if split != records:
        print(
            f"{data}: no split labels; using the split of the model's training run ({trained.val_fraction:g} of the "
            f"images held out as val, seed {trained.seed})",
            file=sys.stderr,
        )
    return split


def _print_style_table(table: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    view = Table("style", "captions", "style accuracy", "CIDEr-D", "content match", "content exact")
    for style, row in table["styles"].items():
        cells = [row["style_accuracy"], row["cider_d"], row["content_match"], row["content_exact"]]
        view.add_row(style, str(row["count"]), *("-" if v is None else f"{v:.3f}" for v in cells))
    Console(stderr=True).print(view)
