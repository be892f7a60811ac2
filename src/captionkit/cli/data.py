"""``captionkit data check SPEC``: what a dataset holds and what is wrong with it, before a run trips over it."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from captionkit.cli._common import EXIT_INPUT_ERROR, EXIT_OK, fail, plural, progress_bar

app = typer.Typer(help="Inspect caption datasets.", no_args_is_help=True)

_SHOWN = 10  # problems listed one per line in the text output; --json has them all


@app.callback()
def data() -> None:
    """Inspect caption datasets (a callback keeps `data` a group even with a single command)."""


@app.command("check")
def check(
    spec: Annotated[
        str,
        typer.Argument(
            metavar="DATASET", help="Dataset: a file or directory, [FORMAT:]PATH[?images=DIR&val=F&test=F&seed=N]."
        ),
    ],
    split: Annotated[str | None, typer.Option(help="Check only this split (train, val, test).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    val_fraction: Annotated[
        float, typer.Option(help="For data without splits: fraction of images shown as val (as training holds out).")
    ] = 0.05,
    test_fraction: Annotated[float, typer.Option(help="For data without splits: fraction of images as test.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the split by image for data without splits.")] = 0,
    images: Annotated[bool, typer.Option("--images/--no-images", help="Open every image (slow on big sets).")] = True,
    workers: Annotated[int, typer.Option(help="Threads that open images.")] = 4,
) -> None:
    """Counts per split, missing and unreadable images, caption lengths, duplicates, images in several splits.

    A folder with several COCO caption files that are not one dataset (two files of one split) gets each file
    checked on its own. Exit 1 when it finds errors (missing or unreadable images, images in two splits), else 0.
    """
    from captionkit.data.sources import separate_datasets
    from captionkit.errors import CaptionkitError

    if workers < 1:
        fail(f"--workers: must be at least 1, got {workers}")
    try:
        specs = separate_datasets(spec) or [spec]
    except CaptionkitError as error:
        fail(str(error))
    if len(specs) > 1 and not json_output:
        print(f"{spec}: {plural(len(specs), 'COCO caption file')} of one split each, checked one by one:")
        print("".join(f"  {one}\n" for one in specs), end="")
    splitting = _Splitting(val_fraction, test_fraction, seed)
    reports = [_check_one(one, split, splitting, images, workers, json_output) for one in specs]
    if json_output:
        print(json.dumps(reports[0] if len(reports) == 1 else {"spec": spec, "datasets": reports}, indent=2))
    errors = sum(report["errors"] for report in reports)
    raise typer.Exit(EXIT_INPUT_ERROR if errors else EXIT_OK)


@dataclass(frozen=True)
class _Splitting:
    """How data without split labels is shown split: as a training run would hold out val (and test)."""

    val: float
    test: float
    seed: int

    def describe(self, total: int, unsplit: int) -> str:
        if not unsplit:
            return "data"
        test = f", test {self.test:g}" if self.test else ""
        how = f"shown as a training run splits it: by image, seed {self.seed}, val {self.val:g}{test}"
        return f"none in the data; {how}" if unsplit == total else f"data; {unsplit} captions without one {how}"


def _check_one(
    spec: str, split: str | None, splitting: _Splitting, images: bool, workers: int, quiet: bool
) -> dict[str, Any]:
    """The report of one dataset, printed as text unless ``quiet``."""
    from captionkit.data.check import check_records
    from captionkit.data.sources import load_dataset
    from captionkit.data.splits import assign_splits, evaluation_split, select_split
    from captionkit.errors import CaptionkitError

    try:
        loaded = load_dataset(spec)
        unsplit = sum(record.split is None for record in loaded.records)
        evaluated = evaluation_split(loaded.records, None)[1]
        records = loaded.records
        if unsplit:
            records = assign_splits(records, splitting.val, splitting.test, splitting.seed)
    except CaptionkitError as error:
        fail(str(error))
    except ValueError as error:
        fail(str(error))
    chosen = select_split(records, split) if split else records
    if not chosen:
        names = ", ".join(sorted({r.split for r in records if r.split}))
        fail(f"{spec}: no captions in split {split!r} (splits: {names})")
    count = len({record.image_path for record in chosen}) if images else 0
    if images and not quiet:
        with progress_bar("checking images", count) as advance:
            report = check_records(chosen, all_records=records, workers=workers, advance=advance)
    else:
        report = check_records(chosen, all_records=records, open_images=images, workers=workers)
    report = {
        "spec": spec,
        "format": loaded.format,
        "files": [str(path) for path in loaded.files],
        "splits_from": splitting.describe(len(records), unsplit),
        "evaluate_default": evaluated,
        "dropped": loaded.dropped,
        **report,
    }
    if not quiet:
        _print_report(report)
    return report


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from captionkit.data.check import LONG_CAPTION_WORDS

    # Not a terminal (a pipe, a log): rich would assume 80 columns and squeeze the table.
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    console.print(f"{report['spec']}: {report['format']} ({', '.join(report['files'])})")
    console.print(f"splits: {report['splits_from']}")
    console.print(f"evaluate's default split: {report['evaluate_default']}")
    table = Table(show_edge=False)
    for column in ("split", "images", "captions", "neutral", "positive", "negative", "words min/mean/median/max"):
        table.add_column(column, justify="left" if column == "split" else "right")
    rows = [*report["splits"].items(), ("total", report["total"])]
    for name, counts in rows:
        words = counts["caption_words"]
        lengths = f"{words['min']}/{words['mean']:.1f}/{words['median']:g}/{words['max']}"
        styles = [str(counts["styles"][style]) for style in ("neutral", "positive", "negative")]
        table.add_row(name, str(counts["images"]), str(counts["captions"]), *styles, lengths)
    console.print(table)
    for reason, count in sorted(report["dropped"].items()):
        console.print(f"dropped: {count} {reason}")
    duplicates = report["duplicate_captions"]
    console.print(
        f"duplicates: {duplicates['repeated_on_one_image']} captions repeated on one image, "
        f"{duplicates['captions_on_several_images']} captions on several images, "
        f"{len(report['duplicate_images'])} groups of identical image files"
    )
    if not report["images_checked"]:
        console.print("images: not opened (--no-images)")
    _list(console, "missing image", report["missing_images"])
    if report["missing_images"]:
        more = "&" if "?" in report["spec"] else "?"
        console.print(f"hint: images kept in another folder? name it: {report['spec']}{more}images=DIR", markup=False)
    _list(console, "unreadable image", [f"{item['image']}: {item['reason']}" for item in report["unreadable_images"]])
    shared = report["images_in_several_splits"]
    leaks = [f"{item['image']} ({item['by']}): {', '.join(item['splits'])}" for item in shared]
    _list(console, "image in several splits", leaks)
    if report["long_captions"]:
        console.print(f"warning: captions over {LONG_CAPTION_WORDS} words (a quote left open in a table?)")
        _list(console, "long caption", [f"{item['image']}: {item['words']} words" for item in report["long_captions"]])
    errors = report["errors"]
    console.print(plural(errors, "error") if errors else "ok: no errors")


def _list(console: Any, what: str, items: list[str]) -> None:
    if not items:
        return
    console.print(f"{plural(len(items), what)}:")
    for item in items[:_SHOWN]:
        console.print(f"  {item}", markup=False)
    if len(items) > _SHOWN:
        console.print(f"  ... and {len(items) - _SHOWN} more (--json lists all)")
