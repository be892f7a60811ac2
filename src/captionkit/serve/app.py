"""The FastAPI app: ``create_app({"name": captioner, ...}, settings)``.

Routes: ``POST /v1/captions``, ``GET /v1/models``, ``/healthz`` (the process answers; 503 once a model's batching
worker has died, so that an orchestrator restarts the server), ``/readyz`` (models loaded
and batchers running; 503 while starting or shutting down, or once a model's batching worker has died; its
``detail`` says which and why), ``/metrics`` (Prometheus text), ``/`` (the page),
``/docs`` (API docs rendered from ``/openapi.json`` by a page shipped in the package: FastAPI's own docs pages
load their scripts from a CDN, so they are switched off); each GET route answers HEAD too. Every refusal is JSON
``{"detail", "errors"?}`` (see ``captionkit.serve.errors``); nothing a client sends answers 5xx. A model that
fails on a valid request (a bug, out of memory) answers that batch's requests 500 with the error in ``detail``;
later requests run as before. Behind a reverse proxy under a path, ``ServeSettings(root_path=...)`` serves every
route with or without it, and the pages follow it (see ``captionkit.serve.pages``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict
from time import monotonic
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import captionkit
from captionkit.api import Caption, Captioner
from captionkit.attention import seen_box
from captionkit.errors import CaptionkitError, ConfigError, first_line
from captionkit.serve.batching import BatcherFailed, BatcherStopped, MicroBatcher, QueueFull
from captionkit.serve.errors import CLIENT_GONE, ApiError, field_error, invalid_fields, route_refusal
from captionkit.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from captionkit.serve.models import ServedModel
from captionkit.serve.pages import STATIC, UnderPrefix, page
from captionkit.serve.params import CaptionParams, Parameter, parameters, parse_params
from captionkit.serve.schemas import CAPTIONS, MODELS, REFUSAL, json_content
from captionkit.serve.settings import ServeSettings
from captionkit.serve.uploads import (
    IMAGE_FIELD,
    JSON_IMAGES,
    Upload,
    load_uploads,
    parse_body,
    read_body,
)


def create_app(models: Mapping[str, Captioner], settings: ServeSettings | None = None) -> FastAPI:
    """An app serving ``models`` (name -> captioner; the first is the default) within ``settings``' limits."""
    settings = settings or ServeSettings()
    if not models:
        raise ConfigError("models", "serve needs at least one model")
    served = {name: ServedModel(name, captioner) for name, captioner in models.items()}
    metrics = Metrics()
    batchers = {name: _batcher(model, settings, metrics) for name, model in served.items()}
    for name, batcher in batchers.items():
        metrics.watch_queue(name, lambda batcher=batcher: batcher.queued)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Made here, in the loop that serves the requests: an asyncio semaphore belongs to one event loop, and the
        # same app may be started again in another.
        app.state.image_loads = asyncio.Semaphore(settings.max_image_loads)
        for batcher in batchers.values():
            batcher.start()
        app.state.ready = True
        yield
        app.state.ready = False  # uvicorn has finished the in-flight requests by now
        for batcher in batchers.values():
            await batcher.stop()

    app = FastAPI(
        title="captionkit",
        version=captionkit.__version__,
        description="Caption images over HTTP. Refusals are JSON: {detail, errors?}.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ready = False
    app.state.settings = settings
    app.state.batchers = batchers
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=lambda: _route_paths(app))
    app.add_middleware(HeadAsGet)
    app.add_middleware(UnderPrefix, prefix=settings.root_path)  # outermost: the others see the prefixed path

    @app.exception_handler(ApiError)
    async def refuse(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def refuse_route(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return route_refusal(request.method, request.url.path, error.status_code, error.headers).response()

    @app.post(
        "/v1/captions",
        summary="Caption one or more images",
        response_model=None,  # the answer's schema is schemas.CAPTIONS, in openapi_extra
        openapi_extra=_captions_openapi(parameters(settings)),
    )
    async def captions(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        body = await read_body(request, settings.max_upload_bytes, settings.read_timeout_s)
        # The time limit runs from here, decoding the images included: a request whose body has arrived ends within
        # request_timeout_s (plus the decoding of its images, once begun), which is what a graceful shutdown waits for.
        deadline = monotonic() + settings.request_timeout_s
        uploads, body_params = await parse_body(request, body, settings)
        params = parse_params(_merge(_query_params(request), body_params), served, settings)
        images, sizes = await _load_in_turn(app.state.image_loads, uploads, settings, params, deadline)
        found = await _caption(request, batchers[params.model.name], images, params, settings, deadline)
        return {
            "model": params.model.name,
            "style": params.style,
            "decoding": _describe_decoding(params),
            "results": [
                _result(index, upload.name, captions, _attention_box(params, size))
                for index, (upload, size, captions) in enumerate(zip(uploads, sizes, found, strict=True))
            ],
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    @app.get(
        "/v1/models",
        summary="The models this server captions with, what each takes, and the server's limits",
        response_model=None,
        openapi_extra={"responses": {"200": {"description": "The models", "content": json_content(MODELS)}}},
    )
    async def list_models() -> dict[str, Any]:
        return {
            "default": next(iter(served)),
            "limits": _limits(settings),
            "models": [model.describe(settings.max_new_tokens) for model in served.values()],
        }

    @app.get("/healthz", summary="Liveness: the process answers and every model's batching worker runs")
    async def healthz() -> JSONResponse:
        # A dead worker never comes back: failing liveness lets an orchestrator restart the server.
        failed = _failed_workers(batchers)
        if failed:
            return JSONResponse({"status": "failed", "detail": failed}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="Readiness: models loaded and accepting requests")
    async def readyz() -> JSONResponse:
        if not app.state.ready:
            return JSONResponse({"status": "not ready", "detail": "starting or shutting down"}, status_code=503)
        failed = _failed_workers(batchers)
        if failed:
            return JSONResponse({"status": "not ready", "detail": failed}, status_code=503)
        return JSONResponse({"status": "ready", "models": list(served)})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> HTMLResponse:
        return page(request, "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return page(request, "docs.html")

    app.mount("/static", StaticFiles(packages=[STATIC]), name="static")
    return app


class HeadAsGet:
    """ASGI middleware answering HEAD as GET without the body (RFC 9110: a server that answers GET answers HEAD):
    FastAPI's GET routes would refuse it with 405, and load balancers and ``curl -I`` probe with HEAD. A route
    without GET still answers 405, with its ``Allow`` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_head(message: Message) -> None:
            if message["type"] == "http.response.body":  # the headers (Content-Length too) are GET's
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_head)


def _batcher(model: ServedModel, settings: ServeSettings, metrics: Metrics) -> MicroBatcher:
    return MicroBatcher(
        model.captioner.caption_pil,
        settings.max_batch,
        settings.max_wait_ms / 1000,
        settings.max_queue,
        on_batch=lambda size, seconds: metrics.record_batch(model.name, size, seconds),
    )


async def _caption(
    request: Request,
    batcher: MicroBatcher,
    images: list[Image.Image],
    params: CaptionParams,
    settings: ServeSettings,
    deadline: float,
) -> list[list[Caption]]:
    """The n-best captions of ``images``, answered by ``deadline`` (a :func:`time.monotonic` time), unless the
    client goes first: its images then leave the queue (a closed tab must not keep the model busy)."""
    name = params.model.name
    try:
        remaining = deadline - monotonic()
        if remaining <= 0:  # decoding the images took the whole time: no model work for an answer nobody awaits
            raise TimeoutError
        work = asyncio.ensure_future(
            asyncio.wait_for(batcher.submit(images, params.decoding, params.attention), remaining)
        )
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the client left (or this task was cancelled): withdraw its images
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.cancelled():
            raise ApiError(CLIENT_GONE, "the client closed the connection before the answer")
        return work.result()
    except ApiError:
        raise
    except QueueFull as full:
        retry = {"Retry-After": str(settings.retry_after_s)}
        raise ApiError(503, f"model {name!r}: queue full ({full}); retry later", headers=retry) from None
    except BatcherStopped:
        raise ApiError(503, "server is shutting down", headers={"Retry-After": str(settings.retry_after_s)}) from None
    except BatcherFailed as failed:  # no Retry-After: this model serves nothing more until the server restarts
        raise ApiError(503, f"model {name!r}: not available: {failed}; the server needs a restart") from None
    except TimeoutError:
        raise _no_answer(name, settings) from None
    except CaptionkitError as error:  # a request the checks above let through but the model refuses
        raise ApiError(422, f"model {name!r}: {error}") from None
    except Exception as error:  # the model failed on a request it should have run: the batcher logged it
        raise ApiError(500, f"model {name!r}: internal error ({type(error).__name__}: {first_line(error)})") from None


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection. The body has been read by now, so the server's next
    message is ``http.disconnect`` (or none until the answer has been sent); a server that cannot say counts as
    the client gone."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # nothing more can be received on this connection: no one will read the answer either
        return


def _failed_workers(batchers: Mapping[str, MicroBatcher]) -> str:
    """Which models' batching workers have died and why ("" when none has)."""
    return "; ".join(f"model {name!r}: {b.failure}" for name, b in batchers.items() if b.failure is not None)


def _query_params(request: Request) -> dict[str, str]:
    """The query parameters; one given twice is refused (as a repeated form field or JSON key is), not the last kept."""
    params: dict[str, str] = {}
    repeated: list[str] = []
    for name, value in request.query_params.multi_items():
        if name in params:
            repeated.append(name)
        params[name] = value
    if repeated:
        raise invalid_fields([field_error(name, "given more than once") for name in dict.fromkeys(repeated)])
    return params


def _merge(query: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Query parameters and body fields together; the same name in both is refused rather than guessed at."""
    both = sorted(set(query) & set(body))
    if both:
        raise invalid_fields([field_error(name, "given both as a query parameter and in the body") for name in both])
    return query | body


def _result(
    index: int, name: str, captions: list[Caption], box: tuple[float, float, float, float] | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "index": index,
        "image": name,
        "caption": captions[0].caption,
        "score": captions[0].score,
        "captions": [_caption_record(caption) for caption in captions],
    }
    if box is not None:
        result["attention_box"] = [round(fraction, 6) for fraction in box]
    return result


async def _load_in_turn(
    turns: asyncio.Semaphore, uploads: list[Upload], settings: ServeSettings, params: CaptionParams, deadline: float
) -> tuple[list[Image.Image], list[tuple[int, int]]]:
    """The uploads decoded at the model's size, and the (width, height) each was sent at (see
    :func:`captionkit.serve.uploads.load_uploads`), once one of ``turns`` (``max_image_loads``) is free: a request
    waiting for its turn holds neither a thread nor an image. One whose time runs out while it waits answers 504."""
    try:
        async with asyncio.timeout(deadline - monotonic()):
            await turns.acquire()
    except TimeoutError:
        raise _no_answer(params.model.name, settings) from None
    try:
        return await run_in_threadpool(load_uploads, uploads, settings, params.model.captioner.preprocessing)
    finally:
        turns.release()


def _no_answer(name: str, settings: ServeSettings) -> ApiError:
    return ApiError(504, f"model {name!r}: no answer within {settings.request_timeout_s:g} s")


def _attention_box(params: CaptionParams, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """With attention asked for: the part of the (upright) image of ``size`` that the attention grids cover, the
    centre crop the model saw (see :func:`captionkit.attention.seen_box`); None without attention."""
    return seen_box(params.model.captioner.preprocessing, size) if params.attention else None


def _caption_record(caption: Caption) -> dict[str, Any]:
    """A caption's JSON; with attention, one ``{"token", "grid"}`` per token, the (h, w) grid as nested lists of
    weights rounded to 3 decimals (each grid sums to 1 before rounding; see ``captionkit.attention``)."""
    record: dict[str, Any] = {"caption": caption.caption, "score": caption.score}
    if caption.attention is not None and caption.tokens is not None:
        record["attention"] = [
            {"token": token, "grid": grid.round(3).tolist()}
            for token, grid in zip(caption.tokens, caption.attention, strict=True)
        ]
    return record


def _describe_decoding(params: CaptionParams) -> dict[str, Any]:
    config = asdict(params.decoding)
    config["max_length"] = config.pop("max_new_tokens")
    config["n_best"] = config.pop("num_return_sequences")
    return config


def _limits(settings: ServeSettings) -> dict[str, int]:
    """What a client (the page) needs to know to send requests this server takes: it splits many images into
    requests of at most max_images and max_upload_bytes."""
    return {
        "max_images": settings.max_images,
        "max_upload_bytes": settings.max_upload_bytes,
        "max_beams": settings.max_beams,
        "max_n_best": settings.max_n_best,
        "max_length": settings.max_new_tokens,
    }


def _route_paths(app: FastAPI) -> frozenset[str]:
    return frozenset(getattr(route, "path", "") for route in app.routes)


def _captions_openapi(table: tuple[Parameter, ...]) -> dict[str, Any]:
    """The OpenAPI description of ``POST /v1/captions``, built from the same table that validates requests."""
    properties = {p.name: _schema(p) for p in table}
    image_files = {"type": "array", "items": {"type": "string", "format": "binary"}}
    base64_list = {"type": "array", "items": {"type": "string", "description": "base64 or data: URL"}}
    return {
        "description": "Parameters go in the query string or in the body (form fields or JSON keys), not both: a name"
        " in both, or given twice in one, is refused with 422 rather than one of them picked.",
        "parameters": [
            {"name": p.name, "in": "query", "required": False, "description": p.help, "schema": _schema(p)}
            for p in table
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {IMAGE_FIELD: image_files, **properties}}
                },
                "application/json": {
                    "schema": {"type": "object", "properties": {JSON_IMAGES: base64_list, **properties}}
                },
            },
        },
        "responses": {
            "200": {"description": "The n-best captions of each image", "content": json_content(CAPTIONS)},
            **{str(status): {"description": why, "content": json_content(REFUSAL)} for status, why in _REFUSALS},
        },
    }


_REFUSALS = (
    (400, "Malformed body"),
    (408, "Request head or body not received within the read timeout"),
    (413, "Body over the upload limit"),
    (415, "Content type or image format not accepted"),
    (422, "Invalid parameter or unreadable image"),
    (500, "The model failed on this request's batch (internal error)"),
    (503, "Queue full (see Retry-After), or the model's worker stopped"),
    (504, "No answer within the request timeout"),
)


def _schema(parameter: Parameter) -> dict[str, Any]:
    kinds = {str: "string", int: "integer", float: "number", bool: "boolean"}
    schema: dict[str, Any] = {"type": kinds[parameter.kind], "description": parameter.help}
    if parameter.low is not None:
        schema["exclusiveMinimum" if parameter.low_open else "minimum"] = parameter.low
    if parameter.high is not None:
        schema["maximum"] = parameter.high
    return schema
