"""``captionkit data check SPEC``: what a dataset holds and what is wrong with it, before a run trips over it."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from captionkit.cli._common import EXIT_INPUT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, fail, progress_bar
from captionkit.config import DataSection
from captionkit.files import one_line
from captionkit.wording import plural, tally

app = typer.Typer(help="Inspect caption datasets.", no_args_is_help=True)

_SHOWN = 10  # problems listed one per line in the text output; --json has them all
_SPLITS = ("train", "val", "test")
# splitting_problem's names of the options -> the flags that give them here.
_SPLITTING_FLAGS = {
    "val": "--val-fraction",
    "test": "--test-fraction",
    "val and test": "--val-fraction and --test-fraction",
    "seed": "--seed",
}


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
    split: Annotated[str | None, typer.Option(help="Check only this split (train, val, test; all: every one).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help=f"For data without splits: fraction of images shown as val (as training holds out). "
            f"Default: {DataSection.val_fraction}."
        ),
    ] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="For data without splits: fraction of images as test. Default: 0.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the split by image for data without splits. Default: 0.")
    ] = None,
    images: Annotated[bool, typer.Option("--images/--no-images", help="Open every image (slow on big sets).")] = True,
    workers: Annotated[int, typer.Option(help="Threads that open images.")] = 4,
) -> None:
    """Counts per split, missing and unreadable images, caption lengths, duplicates, images in several splits.

    A folder with several COCO caption files that are not one dataset (two files of one split) gets each file
    checked on its own. A shard that cannot be read at all is listed, and the other shards are checked. Exit 2
    when a shard is unreadable, torn or damaged (the check covers the rest of the data: partial), else 1 when it
    finds errors (missing or unreadable images, images in two splits), else 0.
    """
    from captionkit.data.sources import separate_datasets
    from captionkit.errors import CaptionkitError

    if workers < 1:
        fail(f"--workers: must be at least 1, got {workers}")
    chosen_split = _split_option(split)
    splitting = _splitting_options(val_fraction, test_fraction, seed)
    try:
        specs = separate_datasets(spec) or [spec]
    except CaptionkitError as error:
        fail(str(error))
    if len(specs) > 1 and not json_output:
        print(f"{spec}: {plural(len(specs), 'COCO caption file')} of one split each, checked one by one:")
        print("".join(f"  {one}\n" for one in specs), end="")
    try:
        reports = [_check_one(one, chosen_split, splitting, images, workers, json_output) for one in specs]
    except KeyboardInterrupt:  # typer's own answer is a silent exit 130, as if the check had found nothing to say
        print(f"captionkit: interrupted: the check of {spec} did not finish", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_output:
        print(json.dumps(reports[0] if len(reports) == 1 else {"spec": spec, "datasets": reports}, indent=2))
    raise typer.Exit(_exit_code(reports))


def _exit_code(reports: list[dict[str, Any]]) -> int:
    """2 (partial) when a shard could not be read, whole or in part: samples nobody can count went unchecked; 1 for
    the other errors, which the check saw whole; else 0."""
    if any(report["unreadable_shards"] or report["damaged_shards"] for report in reports):
        return EXIT_PARTIAL
    return EXIT_INPUT_ERROR if any(report["errors"] for report in reports) else EXIT_OK


def _split_option(split: str | None) -> str | None:
    """``--split`` as captionkit names splits (``dev`` -> ``val``, ``restval`` -> ``train``); None for all of them."""
    from captionkit.data.formats.base import normalize_split

    if split is None:
        return None
    name = normalize_split(split)
    if name == "all":
        return None
    if name not in _SPLITS:
        fail(f"--split: must be one of {', '.join(_SPLITS)} or all, got {split!r}")
    return name


def _splitting_options(val_fraction: float | None, test_fraction: float | None, seed: int | None) -> _Splitting:
    """The split options, checked here so that a bad one is named before any data is read."""
    from captionkit.data.splits import splitting_problem

    val = DataSection.val_fraction if val_fraction is None else val_fraction
    test = 0.0 if test_fraction is None else test_fraction
    problem = splitting_problem(val, test, seed)
    if problem is not None:
        option, reason = problem
        fail(f"{_SPLITTING_FLAGS[option]}: {reason}")
    flags = (("--val-fraction", val_fraction), ("--test-fraction", test_fraction), ("--seed", seed))
    given = tuple(flag for flag, value in flags if value is not None)
    return _Splitting(val, test, 0 if seed is None else seed, given)


@dataclass(frozen=True)
class _Splitting:
    """How data without split labels is shown split: as a training run would hold out val (and test)."""

    val: float
    test: float
    seed: int
    given: tuple[str, ...] = ()  # the flags given on the command line, which data with splits leaves unused

    def unused_note(self, spec: str, by_spec: bool) -> str | None:
        """A note when split flags were given for data that names every caption's split (or whose spec's ``val=`` /
        ``test=`` gave the others one), where they change nothing."""
        if not self.given:
            return None
        flags = ", ".join(self.given)
        verb = "changes" if len(self.given) == 1 else "change"
        where = "in the data or by the spec's val=/test=" if by_spec else "in the data"
        return f"captionkit: note: {flags} {verb} nothing here: every caption of {spec} has its split {where}"

    def describe(self, total: int, unsplit: int, by_spec: bool = False) -> str:
        if not unsplit:
            return "data, and the spec's val=/test= for captions without one" if by_spec else "data"
        test = f", test {self.test:g}" if self.test else ""
        how = f"shown as a training run splits it: by image, seed {self.seed}, val {self.val:g}{test}"
        if unsplit == total:
            return f"none in the data; {how}"
        # The report's "splits_from", which --json prints: its count is written ungrouped ("1200"), as it was.
        return f"data; {plural(str(unsplit), 'caption')} without one {how}"


def _check_one(
    spec: str, split: str | None, splitting: _Splitting, images: bool, workers: int, quiet: bool
) -> dict[str, Any]:
    """The report of one dataset, printed as text unless ``quiet``."""
    from captionkit.data.check import check_records, damaged_shards, load_checked
    from captionkit.data.sources import parse_spec
    from captionkit.data.splits import assign_splits, evaluation_split, select_split
    from captionkit.errors import CaptionkitError

    try:
        loaded, unreadable = load_checked(spec)
        unsplit = sum(record.split is None for record in loaded.records)
        evaluated = evaluation_split(loaded.records, None)[1]
        records = loaded.records
        if unsplit:
            records = assign_splits(records, splitting.val, splitting.test, splitting.seed)
    except (CaptionkitError, ValueError) as error:
        fail(str(error))
    by_spec = parse_spec(spec).assigns_splits  # the reader gave captions without a split one: unsplit is 0
    note = None if unsplit else splitting.unused_note(spec, by_spec)
    if note is not None:
        print(note, file=sys.stderr)
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
    damaged = damaged_shards(loaded.dropped, loaded.files)
    report = {
        "spec": spec,
        "format": loaded.format,
        "files": [str(path) for path in loaded.files],
        "splits_from": splitting.describe(len(records), unsplit, by_spec),
        "evaluate_default": evaluated,
        "dropped": loaded.dropped,
        "unreadable_shards": unreadable,
        "damaged_shards": damaged,
        **report,
    }
    # A torn or damaged shard lost samples nobody can count (its other samples are kept), and an unreadable one all
    # of them: an error, not a dropped caption a run may shrug off.
    report["errors"] += len(unreadable) + len(damaged)
    if not quiet:
        _print_report(report)
    return report


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from captionkit.data.check import LONG_CAPTION_WORDS

    # Not a terminal (a pipe, a log): rich would assume 80 columns and squeeze the table. No markup: the lines hold
    # paths and reasons, and a folder named "photos[old]" printed as "photos", "x[/b]" raised a MarkupError.
    width = None if sys.stdout.isatty() else 120
    console = Console(file=sys.stdout, highlight=False, soft_wrap=True, width=width, markup=False)
    # A collection of thousands of shards would otherwise make its first line thousands of names long.
    files = report["files"]
    more = f", ... and {len(files) - _SHOWN} more" if len(files) > _SHOWN else ""
    console.print(f"{report['spec']}: {report['format']} ({', '.join(files[:_SHOWN])}{more})")
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
    _print_dropped(console, report)
    duplicates = report["duplicate_captions"]
    found = [
        f"{plural(duplicates['repeated_on_one_image'], 'caption')} repeated on one image",
        f"{plural(duplicates['captions_on_several_images'], 'caption')} on several images",
    ]
    if report["images_checked"]:
        found.append(f"{plural(len(report['duplicate_images']), 'group')} of identical image files")
    console.print("duplicates: " + ", ".join(found))
    if not report["images_checked"]:
        console.print("images: not opened (--no-images): missing, unreadable and identical files not looked for")
    missing = report["missing_images"]
    _list(console, plural(len(missing), "missing image"), missing)
    if missing:
        more = "&" if "?" in report["spec"] else "?"
        console.print(f"hint: images kept in another folder? name it: {report['spec']}{more}images=DIR", markup=False)
    unreadable = [f"{item['image']}: {item['reason']}" for item in report["unreadable_images"]]
    _list(console, plural(len(unreadable), "unreadable image"), unreadable)
    shared = report["images_in_several_splits"]
    leaks = [f"{item['image']} ({item['by']}): {', '.join(item['splits'])}" for item in shared]
    _list(console, f"{plural(len(leaks), 'image')} in several splits", leaks)
    unreadable = [f"{item['shard']}: {item['reason']}" for item in report["unreadable_shards"]]
    _list(console, f"{plural(len(unreadable), 'unreadable shard')} (left out: the others are checked)", unreadable)
    damage = [f"{item['shard']}: {item['reason']}" for item in report["damaged_shards"]]
    shards = len({item["shard"] for item in report["damaged_shards"]})
    _list(console, f"{plural(shards, 'damaged shard')} (their other samples are read)", damage)
    if report["long_captions"]:
        console.print(f"warning: captions over {LONG_CAPTION_WORDS} words (a quote left open in a table?)")
        long = [f"{item['image']}: {item['words']} words" for item in report["long_captions"]]
        _list(console, plural(len(long), "long caption"), long)
    errors = report["errors"]
    console.print(plural(errors, "error") if errors else "ok: no errors")


def _print_dropped(console: Any, report: dict[str, Any]) -> None:
    """A ``dropped:`` line per reason, the reasons of the whole data first, then those naming one file (a shard's
    unreadable member), at most :data:`_SHOWN` in all; the damaged shards are listed with the errors."""
    damage = {f"{item['shard']}: {item['reason']}" for item in report["damaged_shards"]}
    files = set(report["files"])  # a set: a collection may have thousands of shards, each with its reason
    dropped = [(reason, count) for reason, count in report["dropped"].items() if reason not in damage]
    dropped.sort(key=lambda item: (item[0].partition(": ")[0] in files, item[0]))
    for reason, count in dropped[:_SHOWN]:
        console.print(f"dropped: {one_line(tally({reason: count}))}")
    if len(dropped) > _SHOWN:
        console.print(f"dropped: ... and {plural(len(dropped) - _SHOWN, 'more reason')} (--json lists all)")


def _list(console: Any, heading: str, items: list[str]) -> None:
    """``heading`` (the count and what they are), then the first items, one a line."""
    if not items:
        return
    console.print(f"{heading}:", markup=False)
    for item in items[:_SHOWN]:
        console.print(f"  {one_line(item)}", markup=False)  # a name's newline made two items of one
    if len(items) > _SHOWN:
        console.print(f"  ... and {len(items) - _SHOWN:,} more (--json lists all)")  # grouped as the heading's
