"""``captionkit caption``: caption files, folders and lists of images into JSONL, CSV or JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from captionkit.cli._common import EXIT_OK, EXIT_PARTIAL, fail, progress_bar, quiet_libraries

DEFAULT_MODEL = "nlpconnect/vit-gpt2-image-captioning"


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
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    output: Annotated[Path | None, typer.Option(help="Output file (default: stdout).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv or json.")] = "jsonl",
    resume: Annotated[bool, typer.Option(help="Skip images already in --output.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
) -> None:
    """Caption images; one record per image. Exit 0 when all succeed, 2 when some images failed."""
    quiet_libraries()
    from captionkit.api import Captioner
    from captionkit.batch import caption_files
    from captionkit.decoding import DecodingConfig
    from captionkit.errors import CaptionkitError
    from captionkit.inputs import collect_images
    from captionkit.outputs import FORMATS, RecordWriter, read_records

    if fmt not in FORMATS:
        fail(f"--format: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if resume and output is None:
        fail("--resume needs --output (the file to continue)")
    if batch_size < 1:
        fail(f"--batch-size: must be at least 1, got {batch_size}")
    try:
        config = DecodingConfig(
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
        paths = collect_images(inputs)
        existing = read_records(output, fmt) if (resume and output is not None) else []
        if output is not None and not resume and fmt != "json" and output.exists():
            output.unlink()
        done = {record.get("image") for record in existing}
        todo = [path for path in paths if str(path) not in done]
        captioner = Captioner.from_pretrained(model, device=device)
        writer = RecordWriter(output, fmt, existing)
    except CaptionkitError as error:
        fail(str(error))
    if len(todo) < len(paths):
        print(f"resuming: {len(paths) - len(todo)} of {len(paths)} images already done", file=sys.stderr)
    try:
        with progress_bar("captioning", len(todo)) as advance:
            summary = caption_files(captioner, todo, config, writer, batch_size, advance)
    finally:
        writer.close()
    print(f"captioned {summary.captioned} images, {summary.errors} errors", file=sys.stderr)
    raise typer.Exit(EXIT_PARTIAL if summary.errors else EXIT_OK)
