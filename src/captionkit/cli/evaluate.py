"""``captionkit evaluate``: caption a dataset split with a model and score it."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from captionkit.cli._common import (
    DTYPE_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    check_not_overwriting,
    cli_flag,
    decoding_flags,
    decoding_help,
    error_line,
    fail,
    fail_writing,
    progress_bar,
    quiet_libraries,
)
from captionkit.files import write_atomic
from captionkit.wording import plural

if TYPE_CHECKING:
    from captionkit.api import Captioner
    from captionkit.data.records import CaptionRecord
    from captionkit.errors import CaptionkitError
    from captionkit.evaluation.clipscore import ClipScorer
    from captionkit.model_evaluation import ModelEvaluation
    from captionkit.trained_on import TrainedOn


def evaluate(
    model: Annotated[str, typer.Option(help="Checkpoint directory or Hugging Face hub id.")],
    data: Annotated[str, typer.Option(help="Dataset: a file or directory captionkit reads (COCO, Flickr, CSV...).")],
    split: Annotated[
        str | None,
        typer.Option(
            help="Split to evaluate (train, val, test, or all; default: test; without one, val where the data has "
            "train and val splits; else all). The run's own data without split labels is split as the model's "
            "training run split it (its train_config.json), so by default it is evaluated on the images it held out."
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
    as_validation: Annotated[
        bool,
        typer.Option(
            "--as-validation",
            help="Compute what the model's training run logged as validation: --data is the run's validation data "
            "(its data.val, or the data.train it held val out of), perplexity over the captions its validation "
            "loss read (train.eval_batches), CIDEr-D of greedy captions of its train.eval_images images.",
        ),
    ] = False,
) -> None:
    """Caption every image of a split, score against its references; metrics JSON on stdout, a table on stderr.

    With --styles: caption each image in each style the model was trained to write and report, per style, style
    accuracy (a naive Bayes sentiment classifier trained on the data's train-split captions), CIDEr-D against that
    style's references, and content match with the model's neutral caption.

    With --as-validation: the figures of the run's last validation, recomputed (`val_perplexity` and `val_cider`
    are `perplexity` and `CIDEr`), and those it logged beside them.
    """
    quiet_libraries()
    from captionkit.api import Captioner
    from captionkit.cli.scoring import DEFAULT_CLIP_MODEL, check_meteor_option, score_table
    from captionkit.data.sources import load_dataset
    from captionkit.errors import CaptionkitError, InputError
    from captionkit.evaluation.api import java_note, parse_metrics
    from captionkit.model_evaluation import (
        NoImageRead,
        evaluate_as_validation,
        evaluate_model,
        evaluate_model_styles,
        validation_images,
    )
    from captionkit.report import write_evaluation_report
    from captionkit.trained_on import TrainedOn

    if batch_size < 1:
        fail(f"--batch-size: must be at least 1, got {batch_size}")
    if styles and report is not None:
        fail("--report: not with --styles (the style table goes to stderr, and to styles.json with --output)")
    if styles and (metrics is not None or meteor != "python"):
        # The style table's figures are fixed; a --metrics list would otherwise be ignored without a word.
        flag = "--metrics" if metrics is not None else "--meteor"
        fail(f"{flag}: not with --styles (its table is style accuracy, CIDEr-D and content match, for every style)")
    if lexicon is not None and not styles:
        fail("--lexicon: only with --styles (its words train the style classifier)")
    if as_validation:
        _check_as_validation(split=split, beams=beams, max_length=max_length, styles=styles)
    try:
        _check_outputs(output, report)  # before the data is read or any model loads: writing comes last
        chosen_metrics, _ = parse_metrics(metrics)  # before any model loads
        if clip_model != DEFAULT_CLIP_MODEL and "CLIPScore" not in chosen_metrics:
            # Only CLIPScore loads it: it was ignored without a word, and no CLIPScore came.
            raise InputError("--clip-model", "only with --metrics naming CLIPScore: nothing else reads it")
        check_meteor_option(meteor, metrics)
        request = decoding_flags(beams=beams, max_length=max_length)
        trained = TrainedOn.read(model)
        loaded = load_dataset(data)
        _note_damaged_shards(data, loaded.dropped, loaded.files)
        _check_not_inputs(output, report, [*loaded.files, *(r.image_path for r in loaded.records), lexicon])
        own_data = _OwnData(trained, data, loaded.files)
        records = _split_as_trained(
            loaded.records, trained, data, lambda: split is not None or as_validation or own_data()
        )
        as_run = _validation_run(model, trained) if as_validation else None
        chosen = _chosen_records(records, split, data, own_data, trained, as_run)
        train_captions = [r.caption for r in records if r.split == "train"]
        if styles:
            classifier = _style_classifier(records, data, lexicon)
        captioner = Captioner.from_pretrained(model, device=device, dtype=dtype)
        if "neutral" not in captioner.styles:
            # Trained on positive and negative alone: no neutral captions to score; each style is scored on its own
            # (--styles, --as-validation), from a config whose start token those replace per style.
            if not (styles or as_validation):
                fail(
                    f"{model} was trained on {' and '.join(captioner.styles)} captions only (its data.styles leave "
                    "neutral out): evaluate it with --styles, each style against its references"
                )
            request = dataclasses.replace(request, style=captioner.styles[0])
        decoding = captioner.resolve_decoding(request)  # a length the model cannot take names --max-length
        if styles:
            _check_writes_styles(captioner)
            with progress_bar("styles", len({r.image_id for r in chosen})) as advance:
                table = evaluate_model_styles(captioner, chosen, classifier, decoding, None, batch_size, advance)
            _print_style_table(table)
            if output is not None:
                _write_results(output, {"styles.json": json.dumps(table, indent=2) + "\n"})
            print(json.dumps(table))
            raise typer.Exit(EXIT_PARTIAL if table["failed_images"] else EXIT_OK)
        note = java_note(metrics, meteor)
        if note is not None:
            print(f"captionkit: note: {note}", file=sys.stderr)
        clip = _clip_scorer(metrics, clip_model, device)
        # With styles, each style's first train.eval_images images: together more than train.eval_images.
        images = validation_images(chosen, as_run) if as_run is not None else len({r.image_id for r in chosen})
        with progress_bar("evaluating", images) as advance:
            if as_run is not None:
                result = evaluate_as_validation(
                    captioner, chosen, as_run, metrics, train_captions or None, batch_size, advance, clip, meteor
                )
            else:
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
    except NoImageRead as error:
        if output is None:
            fail(_naming_data(error, data))
        _write_results(
            output, {"results.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in error.results)}
        )
        fail(f"{_naming_data(error, data)}; every image's error is in {output / 'results.jsonl'}")
    except CaptionkitError as error:
        fail(_naming_data(error, data))
    except KeyboardInterrupt:  # typer's own answer is a silent exit 130, which leaves no word of what was lost
        print("captionkit: interrupted: nothing written (results come once every image is scored)", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_run is not None:
        result.metrics["logged_validation"] = as_run.last_validation
    elif trained is not None and trained.last_validation is not None:
        print(_reproduce_hint(model, data, trained), file=sys.stderr)
    # The results and metrics first: a report page that cannot be written must not cost them.
    if output is not None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.results)
        _write_results(output, {"results.jsonl": lines, "metrics.json": json.dumps(result.metrics, indent=2) + "\n"})
    print(json.dumps(result.metrics))
    print(score_table(result.metrics), file=sys.stderr)
    for note in _notes(result):  # as score prints them: a metric left out must not be news only in the JSON
        print(f"captionkit: note: {note}", file=sys.stderr)
    for figure, over in result.metrics["computed_over"].items():
        print(f"captionkit: {figure}: {over}", file=sys.stderr)
    if as_run is not None:
        print(_logged_beside(result.metrics), file=sys.stderr)
    if result.metrics["failed_images"]:
        failed = result.metrics["failed_images"]
        where = f": their errors are in {output / 'results.jsonl'}" if output is not None else ""
        print(f"captionkit: {failed} of {result.metrics['images']} images could not be read{where}", file=sys.stderr)
    if report is not None:
        try:
            report.parent.mkdir(parents=True, exist_ok=True)  # as --output's directory is made
            write_evaluation_report(report, result.results, result.metrics)
        except OSError as error:  # named by its flag, as --output's errors are
            fail_writing(report, error, "--report")
    # A metric --metrics asked for and could not get (SPICE without Java) makes the figures partial, as in score.
    raise typer.Exit(EXIT_PARTIAL if result.metrics["failed_images"] or result.missing else EXIT_OK)


def _notes(result: ModelEvaluation) -> list[str]:
    """The scoring's notes (a metric left out and why, a caption given to many images), and each style's (runs with
    styles, ``--as-validation``) named by its style, but once unnamed where every style has it (SPICE left out);
    then how many captions were empty (scored, 0 on their images), as ``score`` counts them."""
    notes = list(result.metrics.get("notes", []))
    per_style = {style: figures.get("notes", []) for style, figures in result.metrics.get("styles", {}).items()}
    shared = set.intersection(*map(set, per_style.values())) if len(per_style) > 1 else set()
    for style, some in per_style.items():
        notes += [note if note in shared else f"{style}: {note}" for note in some]
    captions = [r["caption"] for r in result.results if "caption" in r]
    empty = sum(1 for caption in captions if not caption.strip())
    if empty:
        verb = "is" if empty == 1 else "are"
        notes.append(f"{empty} of the {len(captions)} captions {verb} empty, scored as captions (0 on their images)")
    return list(dict.fromkeys(notes))


def _note_damaged_shards(data: str, dropped: dict[str, int], files: list[Path]) -> None:
    """A note on stderr when shards of the data are torn or damaged: their samples past the damage are in no figure,
    which was said nowhere (``data check`` lists every damage as an error)."""
    from captionkit.data.check import damaged_shards

    damaged = damaged_shards(dropped, files)
    if damaged:
        shards = plural(len({item["shard"] for item in damaged}), "damaged shard")
        first = f"{damaged[0]['shard']}: {damaged[0]['reason']}"
        print(
            f"captionkit: note: {data}: {shards} (first: {first}); the samples lost there are in no figure "
            "(captionkit data check lists every damage)",
            file=sys.stderr,
        )


def _naming_data(error: CaptionkitError, data: str) -> str:
    """The error's line, naming the evaluated data as --data gave it where the layers below call it "data"."""
    from captionkit.errors import InputError

    if isinstance(error, InputError) and error.source == "data":
        return f"{data}: {error.reason}"
    return error_line(error)


def _check_outputs(output: Path | None, report: Path | None) -> None:
    """Refuse a results directory or report page that could not be written, which would otherwise fail only after
    every image was captioned and scored."""
    from captionkit.files import check_output_dir, check_output_file

    if output is not None:
        check_output_dir(output, "--output")
    if report is not None:
        check_output_file(report, "--report")


def _check_not_inputs(output: Path | None, report: Path | None, inputs: Iterable[Path | None]) -> None:
    """Refuse a results file or report page that would replace a file the evaluation reads (the data, an image, the
    lexicon) or one another."""
    written = [("--output", output / name if output else None) for name in ("results.jsonl", "metrics.json")]
    styles = ("--output", output / "styles.json" if output else None)
    check_not_overwriting([*written, styles, ("--report", report)], inputs)


def _write_results(output: Path, files: dict[str, str]) -> None:
    """Write each of ``files`` (name -> text) into the directory ``output``; a failure checked paths cannot foresee
    (a full disk) is one line, not a traceback."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            write_atomic(output / name, text)
    except OSError as error:
        fail_writing(output, error, "--output")


class _OwnData:
    """Whether the evaluated data is data the model's training run read (``TrainedOn.read_data``), asked at most
    once: the answer may cost reading the run's data."""

    def __init__(self, trained: TrainedOn | None, data: str, files: list[Path]) -> None:
        self._trained, self._data, self._files = trained, data, files
        self._answers: dict[bool, bool] = {}

    def __call__(self, train_only: bool = False) -> bool:
        """Whether the data is the run's (its data.train alone with ``train_only``)."""
        if train_only not in self._answers:
            trained = self._trained
            self._answers[train_only] = trained is not None and trained.read_data(self._data, self._files, train_only)
        return self._answers[train_only]


def _chosen_records(
    records: list[CaptionRecord],
    split: str | None,
    data: str,
    own_data: _OwnData,
    trained: TrainedOn | None,
    as_run: TrainedOn | None,
) -> list[CaptionRecord]:
    """The captions to evaluate, saying on stderr which they are: the split's (read as the model's training run read
    them, when it is one), or those the run ``as_run`` validated on."""
    from captionkit.data.splits import evaluation_split
    from captionkit.errors import InputError

    own = True  # the run's own data, where data.first_caption_only holds (as_run: always)
    if as_run is not None:
        chosen = as_run.validation_records(records)
        if not chosen:
            raise InputError(data, "no validation captions where the model's training run found them")
        print(f"captionkit: evaluating as the run's validation: {as_run.describe_validation()}", file=sys.stderr)
    else:
        chosen, which = evaluation_split(records, split, data)
        print(f"captionkit: evaluating {which} of {data}", file=sys.stderr)
        if split is None and trained is not None and _holds_training_images(chosen, trained, own_data):
            print(
                f"captionkit: note: {data} is the data.train of the model's training run, which validated on its "
                "data.val: the images evaluated are images it trained on (a held-out split: --split)",
                file=sys.stderr,
            )
        if trained is not None:
            own = not trained.first_caption_only or own_data()
            chosen = trained.captions(chosen, own)
    if trained is not None:
        print(f"captionkit: data: {trained.describe(own)}", file=sys.stderr)
    return chosen


def _holds_training_images(chosen: list[CaptionRecord], trained: TrainedOn, own_data: _OwnData) -> bool:
    """Whether ``chosen``, the default split of the run's own data.train, holds images the run trained on: it read
    data.val for validation, so no image of data.train without a split was held out (a run that held
    data.val_fraction out has its split reproduced instead, see :func:`_split_as_trained`)."""
    if trained.held_out_val or not any(record.split in (None, "train") for record in chosen):
        return False
    return own_data(train_only=True)


def _check_as_validation(**given: object) -> None:
    """--as-validation sets what those flags would: the run's split, greedy search, its caption length, neutral."""
    for name, value in given.items():
        if value not in (None, False):
            fail(f"{cli_flag(name)}: not with --as-validation (it evaluates as the run's validation did)")


def _validation_run(model: str, trained: TrainedOn | None) -> TrainedOn:
    """The settings of the training run ``model`` comes from, or a one-line error."""
    from captionkit.errors import InputError
    from captionkit.trained_on import TRAIN_CONFIG

    if trained is None:
        raise InputError(
            model, f"--as-validation needs a training run's model directory (with a readable {TRAIN_CONFIG})"
        )
    return trained


def _reproduce_hint(model: str, data: str, trained: TrainedOn) -> str:
    """What the run's log holds, over what, and the command that recomputes it."""
    assert trained.last_validation is not None
    logged = trained.last_validation
    figures = ", ".join(f"{key} {logged[key]}" for key in ("val_perplexity", "val_cider") if key in logged)
    source = trained.validation_data or data
    command = shlex.join(["captionkit", "evaluate", "--model", str(model), "--data", source, "--as-validation"])
    return (
        f"captionkit: note: the run's last validation (step {logged.get('step')}) logged {figures}; "
        f"{trained.describe_validation()}; `{command}` recomputes them"
    )


def _logged_beside(metrics: dict) -> str:
    """The run's logged validation figures beside the ones just computed."""
    logged = metrics.get("logged_validation")
    if logged is None:
        return "captionkit: the model's trainer_state.json holds no logged validation to compare with"
    pairs = [("val_perplexity", "perplexity"), ("val_cider", "CIDEr")]
    shown = [
        f"{key} {logged[key]} (evaluate: {metrics[ours]:.6g})"
        for key, ours in pairs
        if key in logged and ours in metrics
    ]
    return f"captionkit: the run logged at step {logged.get('step')}: " + ", ".join(shown)


def _clip_scorer(metrics: str | None, source: str, device: str | None) -> ClipScorer | None:
    """The CLIP model when --metrics names CLIPScore (loaded before captioning, so a bad --clip-model fails fast)."""
    from captionkit.evaluation import parse_metrics
    from captionkit.evaluation.clipscore import load_clip_scorer

    return load_clip_scorer(source, device) if "CLIPScore" in parse_metrics(metrics)[0] else None


def _check_writes_styles(captioner: Captioner) -> None:
    """A model trained without styles (every hub checkpoint) has no style table: one error, as `caption --style`."""
    from captionkit.errors import InputError

    if captioner.styles == ["neutral"]:
        raise InputError(
            "--styles",
            f"{captioner.name} was trained without styles: it writes neutral captions only "
            "(evaluate without --styles scores them)",
        )


def _style_classifier(records: list, data: str, lexicon: Path | None) -> object:
    from captionkit.errors import InputError
    from captionkit.evaluation.style import StyleClassifier, senticap_sentiment_words

    train = [(r.caption, r.style) for r in records if r.split in (None, "train")]
    found = sorted({style for _, style in train})
    if len(found) < 2:
        held = f"they are all {found[0]}" if found else "it has none"
        raise InputError(
            data, f"--styles trains its style classifier on the train-split captions of two styles or more: {held}"
        )
    return StyleClassifier.fit(train, lexicon=senticap_sentiment_words(lexicon) if lexicon else None)


def _split_as_trained(
    records: list[CaptionRecord], trained: TrainedOn | None, data: str, wanted: Callable[[], bool]
) -> list[CaptionRecord]:
    """Data without split labels, split the way the model's training run split it (the seeded
    ``data.val_fraction`` of the images held out), so ``--split val`` scores the images that run never trained on.
    Only where ``wanted``: a split was asked for, or the data is the run's own, whose default is then the images it
    held out (other data, which the run never read, is evaluated whole by default)."""
    if trained is None or not trained.held_out_val or all(record.split for record in records) or not wanted():
        return records
    split = trained.split(records)
    unlabelled = len({record.image_id for record in records if record.split is None})
    if split != records:
        print(
            f"{data}: {unlabelled} images without split labels; using the split of the model's training run "
            f"({trained.val_fraction:g} of the images held out as val, seed {trained.seed})",
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
