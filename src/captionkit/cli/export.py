"""``captionkit export int8|onnx``: write a trained captioner in a faster or more portable form."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from captionkit.cli._common import EXIT_INTERRUPTED, EXIT_OK, fail, os_error_line, quiet_libraries

app = typer.Typer(
    help="Export a captioner for captioning: int8 (dynamic quantization; every family) or ONNX (vit-gpt2 only). "
    "The export directory loads wherever a model does (caption --model DIR, serve, Captioner.from_pretrained).",
    no_args_is_help=True,
)
# --output's rule, the same for both kinds (checked before the model loads).
NEW_OR_EMPTY = "A new or empty directory, not the model's own."


@app.command("int8")
def int8(
    model: Annotated[str, typer.Option(help="Checkpoint directory or hub id (any family).")],
    output: Annotated[Path, typer.Option(help=f"Directory for the int8 export. {NEW_OR_EMPTY}")],
    backend: Annotated[
        str | None,
        typer.Option(help="torch.ao (default) or torchao (extra 'int8'; far slower on CPUs measured so far)."),
    ] = None,
) -> None:
    """Quantize linear layers to int8 (dynamic): prints what was done as JSON. Its captions are mostly, not always,
    the fp32 model's (measured in the README)."""
    quiet_libraries()
    from captionkit.errors import InputError
    from captionkit.export.int8 import check_backend, export_int8

    try:
        check_backend(backend)
    except InputError as error:
        fail(f"--backend: {error.reason}")
    info = _run_export(lambda: export_int8(model, output, backend), model, output)
    layers = f"{info['layers']} int8 linear layers, {info['backend']}"
    print(f"wrote {output} ({layers}); caption with: captionkit caption IMAGES --model {output}", file=sys.stderr)
    print(json.dumps(info))
    raise typer.Exit(EXIT_OK)


@app.command("onnx")
def onnx(
    model: Annotated[str, typer.Option(help="Checkpoint directory or hub id of a vit-gpt2 model (others: int8).")],
    output: Annotated[
        Path, typer.Option(help=f"Directory for encoder.onnx, cross.onnx, decoder.onnx and configs. {NEW_OR_EMPTY}")
    ],
) -> None:
    """Export encoder and decoder-with-past graphs for onnxruntime (captions equal to PyTorch's in the tests); prints
    the export config as JSON."""
    quiet_libraries()
    from captionkit.export.onnx import export_onnx

    info = _run_export(lambda: export_onnx(model, output), model, output)
    print(f"wrote {output} (onnxruntime); caption with: captionkit caption IMAGES --model {output}", file=sys.stderr)
    print(json.dumps(info))
    raise typer.Exit(EXIT_OK)


def _run_export(export: Callable[[], dict[str, Any]], model: str, output: Path) -> dict[str, Any]:
    """``export()`` once ``--output`` is checked; what stops it is one line, and ``--output`` stays as it was."""
    from captionkit.errors import CaptionkitError

    try:
        _check_export_output(model, output)
        return export()
    except CaptionkitError as error:
        fail(str(error))
    except OSError as error:  # a full disk, a directory removed midway: what the checks cannot foresee
        fail(_write_error(error, output))
    except KeyboardInterrupt:  # typer's own answer is a silent exit 130
        print(f"captionkit: interrupted: no export written to {output}", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _check_export_output(model: str, output: Path) -> None:
    """Refuse, before the model loads, an --output the export would write over: the model directory itself (the
    export replaces its weights), or any directory that already holds files (a model, or anything else). An empty
    directory is fine."""
    from captionkit.errors import InputError
    from captionkit.export import is_model_being_exported
    from captionkit.export.staging import is_stale_staging
    from captionkit.files import check_model_dir

    if is_model_being_exported(model, output):
        raise InputError("--output", f"{output} is the model being exported; choose a new directory")
    check_model_dir(output, "--output")
    # A killed export's staging directory is ours, not the user's: the export removes it.
    if output.is_dir() and any(not is_stale_staging(path) for path in output.iterdir()):
        raise InputError("--output", f"{output} is not empty; export into a new or empty directory")


def _write_error(error: OSError, output: Path) -> str:
    """One line for an OSError in the middle of an export: ``--output: OUTPUT: cannot write (REASON)`` for a file of
    the export (not the staging path it was written through), else ``FILE: REASON``."""
    from captionkit.export.staging import is_export_file
    from captionkit.files import cannot_write

    if error.filename is None or is_export_file(os.fsdecode(error.filename), output):
        return f"--output: {output}: {cannot_write(error)}"
    return os_error_line(error, os.fsdecode(error.filename))
