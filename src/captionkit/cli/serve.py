"""``captionkit serve``: the REST API and web page over one or more models (needs ``captionkit[serve]``)."""

from __future__ import annotations

import importlib.util
import math
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from captionkit.cli._common import DTYPE_HELP, EXIT_INPUT_ERROR, error_line, fail, quiet_libraries

# Import names of what the `serve` extra installs.
if TYPE_CHECKING:
    from captionkit.errors import CaptionkitError
    from captionkit.serve import ServeSettings

SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")
INSTALL_HINT = "captionkit serve needs the serve extra: pip install 'captionkit[serve]'"


def serve(
    model: Annotated[
        list[str], typer.Option(help="Model directory or hub id, optionally NAME=PATH; repeat for side by side.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: all interfaces).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most images in one model call (micro-batching).")] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more images.")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="Images waiting per model before 503 (>= --max-images).")] = 64,
    max_images: Annotated[
        int | None, typer.Option(help="Most images in one request (422 beyond; default 16, or --max-queue if lower).")
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body in MiB (413 beyond).")] = 20.0,
    timeout_s: Annotated[float, typer.Option(help="Per-request time limit in seconds (504 beyond).")] = 30.0,
    read_timeout_s: Annotated[
        float, typer.Option(help="Seconds for a request's head, and again for its body, to arrive (408 beyond).")
    ] = 30.0,
    max_connections: Annotated[int, typer.Option(help="Open connections at most (503 and close beyond).")] = 256,
    max_beams: Annotated[
        int, typer.Option(help="Most beams a request may ask for (422 beyond; lowers the default of 4).")
    ] = 8,
    max_new_tokens: Annotated[
        int, typer.Option(help="Longest max_length a request may ask for (422 beyond; lowers the default of 20).")
    ] = 64,
    max_n_best: Annotated[
        int | None,
        typer.Option(
            help="Most n-best captions a request may ask for (<= --max-beams; default 8, or --max-beams if lower)."
        ),
    ] = None,
    root_path: Annotated[
        str, typer.Option(help="Path a reverse proxy serves this under (e.g. /captions); the page follows it.")
    ] = "",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = "fp32",
) -> None:
    """Serve models over HTTP: POST /v1/captions, GET /v1/models, /healthz, /readyz, /metrics, a page at /."""
    if not all(importlib.util.find_spec(name) for name in SERVE_MODULES):
        print(INSTALL_HINT, file=sys.stderr)
        raise typer.Exit(EXIT_INPUT_ERROR)
    quiet_libraries()
    from captionkit.api import Captioner
    from captionkit.errors import CaptionkitError
    from captionkit.serve import ServeSettings, create_app
    from captionkit.serve.connections import uvicorn_options

    if not 1 <= port <= 65535:
        fail(f"--port: must be between 1 and 65535, got {port}")
    # Checked here, not left to ServeSettings: the MiB -> bytes conversion below would turn 0 or a negative size
    # into a 1-byte limit that refuses every request, and nan or inf into a traceback.
    if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
        fail(f"--max-upload-mb: must be a finite number > 0, got {max_upload_mb:g}")
    listener: socket.socket | None = None
    try:
        names = model_names(model)
        settings = ServeSettings(
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            # Unset, these follow the bound they may not exceed: --max-beams 2 alone clashes with no default.
            max_images=min(ServeSettings.max_images, max_queue) if max_images is None else max_images,
            max_upload_bytes=max(1, int(max_upload_mb * 1024 * 1024)),
            request_timeout_s=timeout_s,
            read_timeout_s=read_timeout_s,
            max_connections=max_connections,
            max_beams=max_beams,
            max_new_tokens=max_new_tokens,
            max_n_best=min(ServeSettings.max_n_best, max_beams) if max_n_best is None else max_n_best,
            root_path=root_path.rstrip("/"),  # "/captions/" is "/captions", and "/" the root
        )
        # The port is taken now, before the models load: one taken by another process fails in a second, not
        # after minutes of loading (and uvicorn would say so in several log lines and exit 3).
        listener = listening_socket(host, port)
        captioners = {}
        for name, source in names.items():
            print(f"loading {name} from {source}", file=sys.stderr)
            captioners[name] = Captioner.from_pretrained(source, device=device, dtype=dtype)
        app = create_app(captioners, settings)
    except CaptionkitError as error:
        if listener is not None:
            listener.close()
        fail(error_line(_named_by_flags(error)))
    # uvicorn handles SIGINT/SIGTERM: it stops accepting, finishes in-flight requests, runs the shutdown, then
    # re-raises the signal to the handler that was there before it: ours, so a requested stop exits 0.
    stopped_by: list[str] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stopped_by.append(signal.Signals(number).name))
    options = {"log_level": "info", "timeout_graceful_shutdown": graceful_shutdown_s(settings)}
    options |= uvicorn_options(app)
    assert listener is not None  # taken in the try above, which fails otherwise
    # uvicorn names the address only for sockets it binds itself.
    # With --root-path, the prefixed paths: what the proxy passes on (routes answer with or without the prefix).
    prefix = settings.root_path
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}{prefix}"
    print(f"captionkit serve: web page at {url}/, API at {prefix}/v1/captions, docs at {prefix}/docs", file=sys.stderr)
    if not run_server(app, listener, host=host, port=port, **options):
        fail("the server did not start (its log above says why)")
    if stopped_by:
        print(f"captionkit serve: stopped by {stopped_by[0]} after finishing in-flight requests", file=sys.stderr)


def graceful_shutdown_s(settings: ServeSettings) -> int:
    """How long a stop waits for the requests in flight: the longest one still gets its body (read timeout) and
    then its answer (request timeout), with a margin; uvicorn cancels what is left, answering 500."""
    return math.ceil(settings.read_timeout_s + settings.request_timeout_s) + 5


# ServeSettings' fields that `captionkit serve` sets from a flag of another name.
FLAGS = {
    "max_batch": "--max-batch",
    "max_wait_ms": "--max-wait-ms",
    "max_queue": "--max-queue",
    "max_images": "--max-images",
    "request_timeout_s": "--timeout-s",
    "read_timeout_s": "--read-timeout-s",
    "max_connections": "--max-connections",
    "max_beams": "--max-beams",
    "max_new_tokens": "--max-new-tokens",
    "max_n_best": "--max-n-best",
    "root_path": "--root-path",
}


def _named_by_flags(error: CaptionkitError) -> CaptionkitError:
    """A settings error (``serve.max_images: must be <= serve.max_queue ...``) in the words of the command line
    (``--max-images: must be <= --max-queue ...``); other errors as they are."""
    from captionkit.errors import ConfigError

    if not (isinstance(error, ConfigError) and error.source.startswith("serve.")):
        return error
    reason = error.reason
    for field, flag in FLAGS.items():
        reason = reason.replace(f"serve.{field}", flag)
    return ConfigError(FLAGS.get(error.source.removeprefix("serve."), error.source), reason)


def model_names(specs: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named by its last path component) -> ``{name: source}``; names must differ."""
    from captionkit.errors import InputError

    names: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep:
            name, source = Path(spec.rstrip("/")).name or spec, spec
        if not name or not source:
            raise InputError("--model", f"{spec!r}: expected PATH or NAME=PATH")
        if name in names:
            raise InputError("--model", f"two models named {name!r}; name them with NAME=PATH")
        names[name] = source
    return names


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` for uvicorn to listen on; an ``InputError`` naming ``--host`` or
    ``--port`` when the address is unknown or taken."""
    from captionkit.errors import InputError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as error:
        raise InputError("--host", f"{host}: unknown address ({error.strerror})") from None
    listener = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn binds: a restarted server gets its port back at once, while old connections wait out TIME_WAIT.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise InputError("--port", f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    return listener


def run_server(app: Any, listener: socket.socket, **options: Any) -> bool:
    """Serve ``app`` with uvicorn on ``listener`` until a signal stops it; whether it started."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, **options))
    server.run(sockets=[listener])
    return server.started
