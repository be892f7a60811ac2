"""``captionkit caption``: caption files, folders and lists of images into JSONL, CSV or JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from captionkit.cli._common import DTYPE_HELP, EXIT_OK, EXIT_PARTIAL, fail, plural, progress_bar, quiet_libraries
from captionkit.hub import DEFAULT_MODEL

if TYPE_CHECKING:
    from captionkit.jobs.run import JobOutcome


def caption(
    inputs: Annotated[list[str], typer.Argument(help="Image files, directories (recursive) or .txt lists.")],
    model: Annotated[str, typer.Option(help="Checkpoint directory or Hugging Face hub id.")] = DEFAULT_MODEL,
    beams: Annotated[int, typer.Option(help="Beam width (1 = greedy).")] = 4,
    max_length: Annotated[int, typer.Option(help="At most this many generated tokens.")] = 20,
    length_penalty: Annotated[float, typer.Option(help="Beam score = log-prob / length ** this.")] = 1.0,
    n_best: Annotated[int, typer.Option(help="Captions per image (<= beams, or samples).")] = 1,
    sample: Annotated[bool, typer.Option(help="Sample instead of beam/greedy search.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely tokens (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    style: Annotated[
        str | None, typer.Option(help="positive, negative or neutral: for models trained with style control.")
    ] = None,
    batch_size: Annotated[
        str, typer.Option(help="Images per batch, or auto: the most that fit on the GPU (8 on a CPU).")
    ] = "8",
    output: Annotated[Path | None, typer.Option(help="Output file (default: stdout).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv, json or parquet.")] = "jsonl",
    resume: Annotated[bool, typer.Option(help="Skip images already in --output (or the shard's part).")] = False,
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
        typer.Option(help="Write DIR/<image>/<NNN>-<token>.png attention heatmaps of each best caption."),
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
    from captionkit.decoding import DecodingConfig
    from captionkit.errors import CaptionkitError
    from captionkit.jobs.batch_size import parse_batch_size
    from captionkit.jobs.run import CaptionJobOptions, run_caption_job

    try:
        decoding = DecodingConfig(
            max_new_tokens=max_length,
            num_beams=1 if sample else beams,
            length_penalty=length_penalty,
            num_return_sequences=n_best,
            do_sample=sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        options = CaptionJobOptions(
            inputs=inputs,
            model=model,
            decoding=decoding,
            style=style,
            batch_size=parse_batch_size(batch_size),
            output=output,
            fmt=fmt,
            resume=resume,
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
        fail(str(error))
    print(_summary_line(outcome), file=sys.stderr)
    raise typer.Exit(EXIT_PARTIAL if outcome.partial else EXIT_OK)


def _summary_line(outcome: JobOutcome) -> str:
    """The closing line: "captioned 1 image, 0 errors", or, when a resumed run found nothing left, so."""
    summary = outcome.summary
    before = f"{plural(outcome.earlier_errors, 'error')} recorded before resuming" if outcome.earlier_errors else ""
    if outcome.already_complete:
        recorded = f" ({before})" if before else ""
        return f"already complete: {plural(outcome.done_before, 'image')} done before{recorded}, nothing left to do"
    counts = f"captioned {plural(summary.captioned, 'image')}, {plural(summary.errors, 'error')}"
    return counts + (f" (and {before})" if before else "")
