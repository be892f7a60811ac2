"""``captionkit benchmark``: captionkit's decoding against transformers' ``generate`` on the same inputs, one run.

JSON on stdout (images/s, latency p50/p95, peak RSS per engine (each in a fresh process decoding one batch; on a GPU
peak GPU memory instead, measured in the one process),
``speedup``, whether captions are identical, the fraction of this machine's compute limit), a table on stderr.
Figures are ratios measured side by side: on a shared machine, compare runs only through them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from captionkit.cli._common import (
    DTYPE_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    decoding_flags,
    decoding_help,
    fail,
    quiet_libraries,
)


def benchmark(
    model: Annotated[
        str | None, typer.Option(help="Checkpoint directory or hub id (a vit-gpt2, BLIP or GIT model).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Instead of --model: a random-weight vit-gpt2 preset (tiny, small, base).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    beams: Annotated[int | None, typer.Option(help=decoding_help("num_beams"))] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Generated tokens per caption (forced in both engines). Default: 20.")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Folder of images to caption (default: random pixels).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed batches per engine, interleaved.")] = 3,
    threads: Annotated[
        int | None, typer.Option(help="torch threads, at most the CPUs this process may use (default: torch's choice).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "fp32",
) -> None:
    """Measure images/s, latency and peak memory of captionkit and transformers generate side by side."""
    quiet_libraries()
    from captionkit.benchmark import BenchmarkSettings, format_table, run_benchmark
    from captionkit.errors import CaptionkitError

    try:
        decoding = decoding_flags(beams=beams, max_length=max_length).config
        settings = BenchmarkSettings(
            model,
            preset,
            batch_size,
            decoding.num_beams,
            decoding.max_new_tokens,
            images,
            repeats,
            threads,
            device,
            dtype,
        )
        result = run_benchmark(settings, progress=lambda message: print(message, file=sys.stderr))
    except CaptionkitError as error:
        fail(str(error))
    except KeyboardInterrupt:  # typer's own answer is a silent exit 130
        print("captionkit: interrupted: no figures written", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    print(format_table(result), file=sys.stderr)
    print(json.dumps(result, indent=2))
    raise typer.Exit(EXIT_OK)
