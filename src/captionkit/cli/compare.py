"""``captionkit compare``: several models' captions of the same images, side by side."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from captionkit.cli._common import (
    DTYPE_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    check_not_overwriting,
    cli_flag,
    decoding_help,
    error_line,
    fail,
    fail_writing,
    quiet_libraries,
)
from captionkit.cli._compare_records import check_csv_names, write_records

if TYPE_CHECKING:
    from captionkit.api import Captioner
    from captionkit.decoding import DecodingConfig

NOTHING_WRITTEN = "no records written (compare writes them once every model has captioned every image)"


def compare(
    inputs: Annotated[
        list[str], typer.Argument(metavar="INPUTS", help="Image files, directories (recursive) or .txt lists.")
    ],
    model: Annotated[
        list[str],
        typer.Option(
            help="A model (directory or hub id), repeated; NAME=MODEL names its column (with a .csv --output, not "
            "image, error or CIDEr NAME), MODEL@STYLE asks it for a style."
        ),
    ],
    beams: Annotated[int | None, typer.Option(help=decoding_help("num_beams"))] = None,
    max_length: Annotated[int | None, typer.Option(help=decoding_help("max_new_tokens"))] = None,
    length_penalty: Annotated[float | None, typer.Option(help=decoding_help("length_penalty"))] = None,
    sample: Annotated[bool, typer.Option(help=decoding_help("do_sample"))] = False,
    temperature: Annotated[float | None, typer.Option(help=decoding_help("temperature"))] = None,
    top_k: Annotated[int | None, typer.Option(help=decoding_help("top_k"))] = None,
    top_p: Annotated[float | None, typer.Option(help=decoding_help("top_p"))] = None,
    seed: Annotated[int | None, typer.Option(help=decoding_help("seed"))] = None,
    prompt: Annotated[str | None, typer.Option(help=decoding_help("prompt") + " Every model is given it.")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Write the records here: JSON lines {image, captions: {model: caption}} (.jsonl, or any other "
            "name), a JSON list (.json), or a table with a column per model (.csv)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images each model captions at once.")] = 8,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "fp32",
    refs: Annotated[
        Path | None,
        typer.Option(
            "--refs",
            help="Reference captions (any `score --refs` format): score each model's captions (a BLEU-4 / ROUGE-L / "
            "CIDEr-D table on stderr, each caption's CIDEr-D in its record).",
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write a self-contained HTML page of the images and every model's caption.")
    ] = None,
) -> None:
    """Caption the same images with several models (e.g. a hub baseline and a SentiCap fine-tune); print a table.

    One record per image: {"image", "captions": {name: caption}} (with --refs also "CIDEr": {name: score}), or
    {"image", "error"} for an unreadable image (exit 2 then).
    """
    quiet_libraries()
    from captionkit.api import Captioner
    from captionkit.decoding.options import decoding_request
    from captionkit.errors import CaptionkitError, InputError
    from captionkit.jobs.inputs import collect_inputs
    from captionkit.jobs.outputs import to_json
    from captionkit.report import write_comparison_report

    specs = [_parse_model(spec) for spec in model]
    names = [name for name, _, _ in specs]
    if len(specs) < 2:
        fail("--model: give at least two models to compare")
    if batch_size < 1:
        fail(f"--batch-size: must be at least 1, got {batch_size}")
    if len(set(names)) < len(names):
        fail(f"--model: two models are named {next(n for n in names if names.count(n) > 1)!r}; name them NAME=MODEL")
    try:
        _check_outputs(output, report)  # else they fail only after every model captioned every image
        if output is not None and output.suffix.lower() == ".csv":
            check_csv_names(names, scored=refs is not None)
        # Checked before any model loads; the style of MODEL@STYLE is blamed on its --model.
        options: dict[str, Any] = {
            "beams": beams,
            "max_length": max_length,
            "length_penalty": length_penalty,
            "sample": sample,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "seed": seed,
            "prompt": prompt,
        }
        requests = [
            decoding_request(naming=_blaming(spec), style=style, **options)
            for spec, (_, _, style) in zip(model, specs, strict=True)
        ]
        paths = [item.path for item in collect_inputs(inputs)]
        if not paths:  # an empty table and exit 0 would pass for a comparison
            raise InputError(", ".join(inputs), "no images found")
        check_not_overwriting([("--output", output), ("--report", report)], [*inputs, *paths, refs])
        # Read before any model loads: a references file that fails must not cost every model's captions.
        references = _references_of(refs, paths) if refs is not None else None
        captioners = {}
        for (name, source, _), request in zip(specs, requests, strict=True):
            captioner = Captioner.from_pretrained(source, device=device, dtype=dtype)
            captioners[name] = (captioner, captioner.resolve_decoding(request))
        records = _caption_all(paths, captioners, batch_size)
        scored = _score_against(references, records, names) if references is not None else None
    except CaptionkitError as error:
        fail(error_line(error))
    except KeyboardInterrupt:  # typer's own answer is a silent exit 130, which leaves no word of what was lost
        print(f"captionkit: interrupted: {NOTHING_WRITTEN}", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if scored is not None:
        _add_cider(records, scored[2])
    _show(records, names)
    if scored is not None:
        _show_scores(scored[1])
    # The records first: a report that cannot be written must not cost them.
    if output is not None:
        write_records(output, records, names)
    else:
        for record in records:
            print(to_json(record))
    if report is not None:
        try:
            report.parent.mkdir(parents=True, exist_ok=True)  # as --output's directory is made
            write_comparison_report(report, records, names, *(scored or ()))
        except OSError as error:
            fail_writing(report, error, "--report")
    raise typer.Exit(EXIT_PARTIAL if any("error" in r for r in records) else EXIT_OK)


def _caption_all(
    paths: list[Path], captioners: dict[str, tuple[Captioner, DecodingConfig]], batch_size: int
) -> list[dict[str, Any]]:
    """One record per path, in order: each model's best caption, or the reason the image could not be read.

    Each batch's readable images are captioned together, by position in the inputs (``jobs.batch.caption_pixels``):
    with a seed, image i is sampled from ``seed + i``, as ``Captioner.caption(paths, seed=...)`` samples it, however
    the batch falls."""
    import torch

    from captionkit.errors import ImageError
    from captionkit.images.preprocessing import Preprocessing
    from captionkit.jobs.batch import caption_pixels
    from captionkit.jobs.pipeline import with_place

    loader = next(iter(captioners.values()))[0]
    records: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        batch: list[dict[str, Any]] = [{"image": str(path)} for path in paths[start : start + batch_size]]
        images = {}
        for position, record in enumerate(batch, start):
            try:
                images[position] = loader.load_images([paths[position]])[0]
            except ImageError as error:
                record["error"] = with_place(error.reason, paths[position])
        positions = list(images)
        for position in positions:
            batch[position - start]["captions"] = {}
        pixels_for: dict[Preprocessing, torch.Tensor] = {}  # models that read images alike share their pixels
        for name, (captioner, config) in captioners.items():
            if not positions:
                break
            prepare = captioner.preprocessing
            if prepare not in pixels_for:
                pixels_for[prepare] = torch.from_numpy(prepare(list(images.values())))
            pixels = pixels_for[prepare].to(captioner.device, captioner.dtype)
            found = caption_pixels(captioner, pixels, positions, config)
            for position, captions in zip(positions, found, strict=True):
                batch[position - start]["captions"][name] = captions[0].caption
        records += batch
    return records


def _check_outputs(output: Path | None, report: Path | None) -> None:
    """Refuse an --output or --report file that could not be written, before any model loads."""
    from captionkit.errors import InputError
    from captionkit.files import check_output_file

    if output is not None:
        check_output_file(output, "--output")
        if output.suffix.lower() == ".parquet":
            raise InputError("--output", f"{output}: compare writes .jsonl, .json or .csv, not Parquet")
    if report is not None:
        check_output_file(report, "--report")


def _references_of(refs: Path, paths: list[Path]) -> dict[str, list[str]]:
    """Each input image's reference captions in ``refs`` (any ``score --refs`` format), by path. Every image that
    can be read needs some; one that cannot gets its error record, as without --refs, references or none."""
    from captionkit.errors import InputError
    from captionkit.evaluation.readers import read_references

    references = read_references(refs)
    found: dict[str, list[str]] = {}
    missing: list[str] = []
    for path in map(str, paths):
        image_id = references.resolve(path)
        if image_id is None:
            missing.append(path)
        else:
            found[path] = references.captions[image_id]
    readable, opened = _readable(missing, 4)
    if readable:
        count = len(missing) - (opened - len(readable))  # those not opened are counted: a wrong file stops early
        listed = ", ".join(readable[:3]) + (", ..." if count > 3 else "")
        raise InputError(refs, f"no references for {count} of the {len(paths)} images: {listed}")
    return found


def _readable(paths: list[str], enough: int) -> tuple[list[str], int]:
    """The first ``enough`` of ``paths`` that open as images (with the limits every model here reads them with), and
    how many were opened to find them: a references file that names none of the images fails after a few, not after
    every image was decoded."""
    from captionkit.errors import ImageError
    from captionkit.images import load_image

    readable: list[str] = []
    opened = 0
    for path in paths:
        if len(readable) == enough:
            break
        opened += 1
        try:
            load_image(path)
        except ImageError:
            continue
        readable.append(path)
    return readable, opened


def _score_against(
    references: dict[str, list[str]], records: list[dict[str, Any]], names: list[str]
) -> tuple[dict[str, list[str]], dict[str, dict[str, float]], dict[str, dict[str, float]]] | None:
    """Each readable image's references (by path), the corpus metrics per model (metric -> model -> value) and each
    caption's CIDEr-D (path -> model -> score); None when no image could be read. Images are scored by path, so two
    files that the references name alike (the same photo in two folders) are two images."""
    from captionkit.evaluation import score_captions

    read = [r["image"] for r in records if "captions" in r]
    if not read:
        print("captionkit: note: no image could be read: nothing to score against --refs", file=sys.stderr)
        return None
    by_path = {path: references[path] for path in read}
    scores: dict[str, dict[str, float]] = {}
    per_image: dict[str, dict[str, float]] = {path: {} for path in read}
    for name in names:
        captions = {r["image"]: r["captions"][name] for r in records if "captions" in r}
        evaluation = score_captions(by_path, captions, "BLEU,ROUGE_L,CIDEr", allow_empty=True)
        for metric in ("Bleu_4", "ROUGE_L", "CIDEr"):
            scores.setdefault(metric, {})[name] = evaluation.scores[metric]
        for path in read:
            per_image[path][name] = evaluation.per_image[path]["CIDEr"]
    return by_path, scores, per_image


def _add_cider(records: list[dict[str, Any]], per_image: dict[str, dict[str, float]]) -> None:
    """Each captioned record's CIDEr-D per model (``--refs``), under the metric's pycocoevalcap name."""
    for record in records:
        if record["image"] in per_image and "captions" in record:
            record["CIDEr"] = per_image[record["image"]]


def _show_scores(scores: dict[str, dict[str, float]]) -> None:
    """The corpus metrics against ``--refs`` (metric -> model -> value), one row per model, on stderr."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="against --refs")
    table.add_column("model")
    for metric in scores:
        table.add_column(metric, justify="right")
    for name in next(iter(scores.values())):
        table.add_row(escape(name), *(f"{scores[metric][name]:.4f}" for metric in scores))
    Console(file=sys.stderr).print(table)


def _parse_model(spec: str) -> tuple[str, str, str | None]:
    """NAME=SOURCE@STYLE -> (name, source, style); the name defaults to SOURCE@STYLE as written. The style is
    checked with the other decoding options (captionkit.decoding.options).

    The name ends at the first "=", and a spec (or its part before "@STYLE") that is an existing path is a source
    whole: a run directory may be named ``runs/lr=1e-4`` or ``runs/model@v2``."""
    name, rest = "", spec
    if "=" in spec and not _is_source(spec):
        name, _, rest = spec.partition("=")
    source, style = rest, None
    if "@" in rest and not Path(rest).exists():
        source, style = rest.rsplit("@", 1)
    if not source:
        fail(f"--model {spec!r}: no model given")
    if style is not None and not style.strip():
        fail(f"--model {spec!r}: no style after '@' (MODEL@STYLE, e.g. {source}@positive)")
    return name or rest, source, style


def _is_source(spec: str) -> bool:
    """Whether ``spec`` names an existing path, alone or before an "@STYLE"."""
    return Path(spec).exists() or ("@" in spec and Path(spec.rsplit("@", 1)[0]).exists())


def _blaming(spec: str) -> Callable[[str], str]:
    """How errors name a decoding option of ``--model SPEC``: its style is the spec's, the rest are flags."""
    return lambda name: f"--model {spec}" if name == "style" else cli_flag(name)


def _show(records: list[dict[str, Any]], names: list[str]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from captionkit.files import printable

    # A file name that is not UTF-8 is shown escaped (caf\\udce9.jpg): stderr may not take its lone surrogates.
    shown = _short_paths([printable(record["image"]) for record in records])
    title = f"images in {shown.folder}" if shown.folder else None
    table = Table(title=escape(title) if title else None)
    # The image column folds rather than cuts: rows whose paths share a long prefix must stay distinguishable.
    table.add_column("image", overflow="fold", min_width=min(40, max(map(len, shown.paths), default=5)))
    for name in names:
        table.add_column(escape(name))
    for record, image in zip(records, shown.paths, strict=True):
        if "error" in record:
            table.add_row(escape(image), f"[red]{escape(record['error'])}[/red]", *[""] * (len(names) - 1))
        else:
            table.add_row(escape(image), *(escape(record["captions"][name]) for name in names))
    Console(file=sys.stderr).print(table)


@dataclass
class _ShortPaths:
    folder: str
    paths: list[str]


def _short_paths(paths: list[str]) -> _ShortPaths:
    """The folder all ``paths`` share and each path relative to it (whole paths when they share none)."""
    folder = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    if not folder or folder == os.sep or any(os.path.isabs(p) != os.path.isabs(paths[0]) for p in paths):
        return _ShortPaths("", list(paths))
    return _ShortPaths(folder, [os.path.relpath(p, folder) for p in paths])
