"""``captionkit merge``: join the parts of a sharded ``caption`` run into one checked result file."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from captionkit.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    check_not_overwriting,
    fail,
    fail_writing,
)
from captionkit.wording import plural

if TYPE_CHECKING:
    from captionkit.jobs.merge import MergeResult
    from captionkit.jobs.merge_index import Names


def merge(
    parts: Annotated[
        list[Path], typer.Argument(metavar="PARTS", help="Part files (OUTPUT.part-K-of-N.jsonl ...), any format.")
    ],
    output: Annotated[Path, typer.Option(help="The merged result file.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option(help="The caption run's inputs (repeat the option): check that each has a record."),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="jsonl, csv, json or parquet: of --output (default: from its suffix, else jsonl), and of a part "
            "whose suffix is none of these.",
        ),
    ] = None,
) -> None:
    """Merge result parts: one record per image, duplicates dropped, gaps reported.

    Exit 0 when complete, 2 when inputs or parts are missing, parts come from runs with different N, a part lost an
    unfinished last line, or some images failed (their error records are kept), 1 on unreadable parts or bad usage.
    """
    from captionkit.errors import CaptionkitError
    from captionkit.files import check_output_file
    from captionkit.jobs.merge import format_of, merge_parts
    from captionkit.jobs.outputs import FORMATS

    out_fmt = fmt or format_of(output)
    if out_fmt not in FORMATS:
        fail(f"--format: unknown format {out_fmt!r} (expected one of {', '.join(FORMATS)})")
    for part in parts:
        _check_part(part, output)
    _check_not_part_named(output)
    try:
        check_output_file(output, "--output")  # before reading the parts: a bad --output costs no merging
        check_not_overwriting([("--output", output)], inputs or ())  # a list of images must not become the result
        expected = _expected_images(inputs) if inputs else None
        result = merge_parts(parts, expected, out_fmt)
        with result:
            _write_merged(result, output, out_fmt)
    except CaptionkitError as error:
        fail(str(error))
    except KeyboardInterrupt:  # typer's own answer is a silent exit 130, which leaves no word of what became of it
        print(f"captionkit: interrupted: {output} left as it was (nothing written)", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _report(result, output)


def _expected_images(inputs: list[str]) -> Iterator[str]:
    """The ``image`` values a caption run of ``inputs`` gives, as a stream. Inputs that hold no image at all (an
    empty folder, a list of nothing) are an error, as they are to ``caption``: against them every record would only
    be reported as unexpected."""
    from captionkit.errors import InputError
    from captionkit.jobs.inputs import iter_inputs

    images = (str(item.path) for item in iter_inputs(inputs))
    first = next(images, None)
    if first is None:
        raise InputError(", ".join(inputs), "no images found (--inputs)")
    return itertools.chain([first], images)


def _check_part(part: Path, output: Path) -> None:
    """A part must be a file, and --output none of the files it stands for: the part, its Parquet journal, or the
    Parquet file a journal belongs to (writing one would leave the other to be read as the same part again)."""
    from captionkit.jobs.parquet_records import journal_owner, journal_path

    if part.is_dir():
        fail(f"{part}: is a directory, not a part file")
    if not part.is_file():
        fail(f"{part}: no such file")
    owner = journal_owner(part) or part
    taken = {owner.resolve(), *([journal_path(owner).resolve()] if owner.suffix.lower() == ".parquet" else [])}
    if output.resolve() in taken:
        fail(f"{part}: is also --output (or its Parquet file or journal); write the merged result to a new file")


def _check_not_part_named(output: Path) -> None:
    """An --output named as a part (``c.part-1-of-4.jsonl``) would replace that part if it is there, and be read as
    it, holding every part's records, by the next ``merge c.part-*``."""
    from captionkit.jobs.sharding import part_of

    shard = part_of(output)
    if shard is not None:
        fail(
            f"--output: {output} is named as part {shard.index}/{shard.count} of a sharded run; write the merged "
            "result to a name without .part-K-of-N"
        )


def _write_merged(result: MergeResult, output: Path, fmt: str) -> None:
    """Stage the merged records beside ``output`` and put them in its place at once. Any failure leaves ``output`` as
    it was and no staging file behind, and is one line (naming ``output`` for what the format cannot hold)."""
    from captionkit.errors import CaptionkitError, InputError
    from captionkit.jobs.outputs import RecordWriter

    staging = output.with_name(output.name + ".tmp")
    try:
        staging.unlink(missing_ok=True)
        writer = RecordWriter(staging, fmt)
        try:
            writer.write(result.records())
        except BaseException:
            writer.abort()
            raise
        writer.close()
        os.replace(staging, output)
    except BaseException as error:
        _remove_staged(staging)
        if isinstance(error, InputError) and error.source == str(staging):
            fail(f"{output}: {error.reason}")  # a record the output format cannot hold
        if isinstance(error, CaptionkitError):
            fail(str(error))  # a part unreadable midway
        if isinstance(error, OSError):
            fail_writing(output, error, "--output")
        raise


def _remove_staged(staging: Path) -> None:
    """Delete what writing ``staging`` may have left: the file, a Parquet journal and Parquet's own staging file."""
    from captionkit.jobs.parquet_records import journal_path

    for leftover in (staging, journal_path(staging), staging.with_name(staging.name + ".tmp")):
        with contextlib.suppress(OSError):  # a directory in the way is not ours to delete
            leftover.unlink(missing_ok=True)


def _report(result: MergeResult, output: Path) -> None:
    """Say on stderr what the merge found and exit: 0 when complete, 2 otherwise."""
    from captionkit.jobs.merge import some

    def warn(message: str) -> None:
        print(f"captionkit merge: {message}", file=sys.stderr)

    if result.torn:
        warn(f"left out an unfinished last line (interrupted run) in {some(result.torn)}")
    if result.duplicates:
        repeated = plural(len(result.duplicates), "image")
        warn(f"{repeated} had more than one record, one kept: {some(result.duplicates)}")
    if len(result.shard_counts) > 1:
        warn(f"parts come from runs with different shard counts: {', '.join(map(str, result.shard_counts))}")
    if result.missing_parts:
        warn(f"missing parts: {some(result.missing_parts)}")
    if result.repeated_parts:
        warn(f"parts given by more than one file: {some(result.repeated_parts)}")
    if result.unexpected:
        unexpected = _counted(result.unexpected, "record", "is", "are")
        warn(f"{unexpected} not among --inputs (kept): {some(result.unexpected)}")
    if result.missing:
        missing = _counted(result.missing, "input", "has", "have")
        warn(f"{missing} no record: {some(result.missing)}")
    if result.missing and result.count and len(result.unexpected) == result.count:
        warn(
            "no record is of an image among --inputs: images are matched by their path as written, so give "
            "--inputs as the caption run was given them (relative or absolute alike)"
        )
    errors = result.errors
    counts = f"{plural(result.count, 'record')} ({plural(errors, 'error')})"
    print(f"merged {plural(result.parts, 'part')}: {counts} -> {output}", file=sys.stderr)
    raise typer.Exit(EXIT_OK if result.complete and not errors else EXIT_PARTIAL)


def _counted(names: Names, noun: str, one: str, many: str) -> str:
    """``1 input has`` / ``3 inputs have``: a count, its noun and its verb in agreement."""
    return f"{plural(len(names), noun)} {one if len(names) == 1 else many}"
