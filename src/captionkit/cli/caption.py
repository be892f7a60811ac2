"""``captionkit caption``: caption files, folders and lists of images into JSONL, CSV or JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from captionkit.cli._common import (
    DTYPE_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    decoding_flags,
    decoding_help,
    error_line,
    fail,
    progress_bar,
    quiet_libraries,
)
from captionkit.hub import DEFAULT_MODEL
from captionkit.wording import plural

if TYPE_CHECKING:
    from captionkit.jobs.run import JobOutcome


def caption(
    inputs: Annotated[
        list[str], typer.Argument(metavar="INPUTS", help="Image files, directories (recursive) or .txt lists.")
    ],
    model: Annotated[str, typer.Option(help="Checkpoint directory or Hugging Face hub id.")] = DEFAULT_MODEL,
    beams: Annotated[int | None, typer.Option(help=decoding_help("num_beams"))] = None,
    max_length: Annotated[int | None, typer.Option(help=decoding_help("max_new_tokens"))] = None,
    length_penalty: Annotated[float | None, typer.Option(help=decoding_help("length_penalty"))] = None,
    n_best: Annotated[int | None, typer.Option(help=decoding_help("num_return_sequences"))] = None,
    sample: Annotated[bool, typer.Option(help=decoding_help("do_sample"))] = False,
    temperature: Annotated[float | None, typer.Option(help=decoding_help("temperature"))] = None,
    top_k: Annotated[int | None, typer.Option(help=decoding_help("top_k"))] = None,
    top_p: Annotated[float | None, typer.Option(help=decoding_help("top_p"))] = None,
    seed: Annotated[int | None, typer.Option(help=decoding_help("seed"))] = None,
    style: Annotated[str | None, typer.Option(help=decoding_help("style"))] = None,
    prompt: Annotated[str | None, typer.Option(help=decoding_help("prompt"))] = None,
    batch_size: Annotated[
        str, typer.Option(help="Images per batch, or auto: the most that fit on the GPU (8 on a CPU).")
    ] = "8",
    output: Annotated[Path | None, typer.Option(help="Output file (default: stdout).")] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="jsonl, csv, json or parquet (default: from --output's suffix, else jsonl)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Skip images already in --output (or the shard's part).")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace an --output (or the shard's part) that holds records; without it, and without "
            "--resume, such an output is refused."
        ),
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "fp32",
    workers: Annotated[
        str,
        typer.Option(
            help="Processes decoding images while the model runs: a number (0 = in-process) or auto. With --engine "
            "ray: captioner actors; 0 or auto: one per GPU in the cluster, else half its CPUs."
        ),
    ] = "0",
    prefetch: Annotated[int, typer.Option(help="Batches each worker prepares ahead (bounds memory).")] = 2,
    shard: Annotated[
        str | None,
        typer.Option(help="K/N: caption only shard K (0-based) of N. Under torchrun each rank takes its own shard."),
    ] = None,
    attention_maps: Annotated[
        Path | None,
        typer.Option(
            help="Write DIR/<image>/<NNN>-<token>.png attention heatmaps of each best caption; DIR/index.jsonl says "
            "which folder is whose image."
        ),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="local, or ray: a Ray Data pipeline with --workers captioner actors.")
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (auto or HOST:PORT); default: start Ray locally.")
    ] = None,
    gpus_per_worker: Annotated[
        str,
        typer.Option(
            help="GPUs per captioner actor with --engine ray: a number, or auto: 1 when the cluster has GPUs, else 0."
        ),
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(
            help="torch threads (each Ray actor's with --engine ray). Default: torch's choice; 1 per Ray actor. "
            "Scores depend on it in the last digits: give both engines the same value for identical records."
        ),
    ] = None,
) -> None:
    """Caption images; one record per image. Exit 0 when all succeed, 2 when some images failed.

    With --shard K/N (or under torchrun) the run takes a fixed 1/N of the inputs and writes OUTPUT with
    .part-K-of-N before its suffix; `captionkit merge` joins the parts.
    """
    quiet_libraries()
    try:  # importing torch takes seconds: a Ctrl-C then is as likely as one while the model loads
        from captionkit.errors import CaptionkitError
        from captionkit.jobs.batch_size import parse_batch_size
        from captionkit.jobs.merge import format_of
        from captionkit.jobs.run import CaptionJobInterrupted, CaptionJobOptions, run_caption_job
    except KeyboardInterrupt:
        _stopped_before_captioning()

    try:
        _check_outputs(output, attention_maps)
        decoding = decoding_flags(
            beams=beams,
            max_length=max_length,
            length_penalty=length_penalty,
            n_best=n_best,
            sample=sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            style=style,
            prompt=prompt,
        )
        options = CaptionJobOptions(
            inputs=inputs,
            model=model,
            decoding=decoding,
            batch_size=parse_batch_size(batch_size),
            output=output,
            # As merge reads parts: out.csv is CSV, and a resumed out.parquet finds its journal.
            fmt=fmt or (format_of(output) if output is not None else "jsonl"),
            resume=resume,
            overwrite=overwrite,
            device=device,
            dtype=dtype,
            workers=workers,
            prefetch=prefetch,
            shard=shard,
            attention_maps=attention_maps,
            engine=engine,
            ray_address=ray_address,
            gpus_per_worker=gpus_per_worker,
            threads=threads,
        )
        outcome = run_caption_job(options, progress_bar)
    except CaptionkitError as error:
        fail(error_line(error))
    except CaptionJobInterrupted as stop:
        if stop.output is not None:
            again = "the same command" if stop.resumed else "the same command with --resume"
            print(
                f"captionkit: interrupted: {stop.output} holds {plural(stop.records, 'record')}; {again} continues it",
                file=sys.stderr,
            )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        _stopped_before_captioning()
    print(_summary_line(outcome), file=sys.stderr)
    if outcome.under_torchrun and (outcome.summary.errors or outcome.earlier_errors):
        print(
            "captionkit: exit 0 although images failed: torchrun takes a nonzero exit for a crashed worker (their "
            "errors are in the output; `captionkit merge` of the parts exits 2 for them)",
            file=sys.stderr,
        )
    raise typer.Exit(EXIT_PARTIAL if outcome.partial else EXIT_OK)


def _stopped_before_captioning() -> NoReturn:
    """Ctrl-C while importing, loading the model or counting the inputs: one line, where typer's own answer is a
    silent exit 130."""
    print("captionkit: interrupted before captioning began: nothing written", file=sys.stderr)
    raise typer.Exit(EXIT_INTERRUPTED) from None


def _check_outputs(output: Path | None, attention_maps: Path | None) -> None:
    """Refuse paths the job could not write before the model loads: the job would fail only after captioning (or,
    for attention maps, note each image and still exit 0)."""
    from captionkit.files import check_output_dir, check_output_file

    if output is not None:
        check_output_file(output, "--output")
    if attention_maps is not None:
        check_output_dir(attention_maps, "--attention-maps")


def _summary_line(outcome: JobOutcome) -> str:
    """The closing line: "32 images: 30 captioned, 2 errors; 9.5 images/s (...)", every image read counted, failed
    ones too; or, when a resumed run found nothing left, so."""
    summary = outcome.summary
    before = f"{plural(outcome.earlier_errors, 'error')} recorded before resuming" if outcome.earlier_errors else ""
    if outcome.already_complete:
        recorded = f" ({before})" if before else ""
        return f"already complete: {plural(outcome.done_before, 'image')} done before{recorded}, nothing left to do"
    # Every count grouped alike ("3,000 images: 2,998 captioned"): plural groups its count.
    counts = f"{plural(summary.images, 'image')}: {summary.captioned:,} captioned, {plural(summary.errors, 'error')}"
    line = counts + (f" (and {before})" if before else "")
    if outcome.left_out:
        line += f"; {plural(outcome.left_out, 'sample')} of the shards with no image left out"
    return line + _rate(summary.images, outcome.caption_seconds, outcome.load_seconds)


def _rate(images: int, seconds: float, load_seconds: float) -> str:
    """ "; 244.1 images/s (12.29 s; loading the model 3.10 s)": the job's pace, without the model's load."""
    if images == 0 or seconds <= 0.0:
        return ""
    return f"; {images / seconds:.1f} images/s ({seconds:.2f} s; loading the model {load_seconds:.2f} s)"
