"""``captionkit export int8|onnx``: write a trained captioner in a faster or more portable form."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from captionkit.cli._common import EXIT_OK, fail, quiet_libraries

app = typer.Typer(help="Export a captioner: int8 (dynamic quantization) or ONNX.", no_args_is_help=True)


@app.command("int8")
def int8(
    model: Annotated[str, typer.Option(help="Checkpoint directory or hub id.")],
    output: Annotated[Path, typer.Option(help="Directory to write (loads with Captioner.from_pretrained).")],
    backend: Annotated[
        str | None,
        typer.Option(help="torch.ao (default) or torchao (extra 'int8'; far slower on CPUs measured so far)."),
    ] = None,
) -> None:
    """Quantize linear layers to int8 (dynamic): prints what was done as JSON."""
    quiet_libraries()
    from captionkit.errors import CaptionkitError, InputError
    from captionkit.export.int8 import check_backend, export_int8

    try:
        check_backend(backend)
    except InputError as error:
        fail(f"--backend: {error.reason}")
    try:
        _check_export_output(model, output)
        info = export_int8(model, output, backend)
    except CaptionkitError as error:
        fail(str(error))
    print(f"wrote {output} ({info['layers']} int8 linear layers, {info['backend']})", file=sys.stderr)
    print(json.dumps(info))
    raise typer.Exit(EXIT_OK)


@app.command("onnx")
def onnx(
    model: Annotated[str, typer.Option(help="Checkpoint directory or hub id (a vit-gpt2 model).")],
    output: Annotated[Path, typer.Option(help="Directory for encoder.onnx, cross.onnx, decoder.onnx and configs.")],
) -> None:
    """Export encoder and decoder-with-past graphs for onnxruntime; prints the export config as JSON."""
    quiet_libraries()
    from captionkit.errors import CaptionkitError
    from captionkit.export.onnx import export_onnx

    try:
        _check_export_output(model, output)
        info = export_onnx(model, output)
    except CaptionkitError as error:
        fail(str(error))
    print(f"wrote {output} (run it with captionkit.api.Captioner.from_onnx)", file=sys.stderr)
    print(json.dumps(info))
    raise typer.Exit(EXIT_OK)


def _check_export_output(model: str, output: Path) -> None:
    """Refuse, before the model loads, an --output the export would write over: the model directory itself (the
    export replaces its weights), or any directory that already holds files (a model, or anything else). An empty
    directory is fine."""
    from captionkit.errors import InputError
    from captionkit.export import is_model_being_exported
    from captionkit.files import check_model_dir

    if is_model_being_exported(model, output):
        raise InputError("--output", f"{output} is the model being exported; choose a new directory")
    check_model_dir(output, "--output")
    if output.is_dir() and any(output.iterdir()):
        raise InputError("--output", f"{output} is not empty; export into a new or empty directory")
