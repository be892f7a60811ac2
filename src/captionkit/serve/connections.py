"""What uvicorn leaves open to slow clients: a deadline for a request's headers and a cap on open connections.

uvicorn closes a keep-alive connection that stays idle after a response, and answers 503 past
``limit_concurrency``, but only once a whole request head has arrived: a client that opens connections and never
finishes its headers (or trickles them a byte at a time) holds each one, and its file descriptor, forever.
:func:`uvicorn_options` gives uvicorn an HTTP protocol that

- closes a connection whose next request head has not arrived ``read_timeout_s`` after the connection opened or
  after its previous response (answering 408 with a JSON body if part of a request came, else closing quietly);
- answers 503 with a JSON body and closes at once when ``max_connections`` are already open.

A request body is held to the same ``read_timeout_s`` by :func:`captionkit.serve.uploads.read_body` (408).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from captionkit.serve.settings import ServeSettings


def uvicorn_options(app: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` that enforce the connection limits of ``app``'s
    settings (:func:`captionkit.serve.create_app`'s app), counting each refusal in its metrics."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    settings: ServeSettings = app.state.settings
    counter = app.state.metrics.connection_refusals

    def refused(status: int) -> None:
        counter.labels(status=str(status)).inc()

    protocol = guarded_protocol(
        AutoHTTPProtocol, settings.read_timeout_s, settings.max_connections, settings.retry_after_s, refused
    )
    return {"http": protocol}


def _raw_response(status: int, phrase: str, detail: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 response with a JSON ``{"detail"}`` body that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    head = [f"HTTP/1.1 {status} {phrase}", "content-type: application/json", f"content-length: {len(body)}"]
    head += ["connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def guarded_protocol(
    base: type[asyncio.Protocol],
    read_timeout_s: float,
    max_connections: int,
    retry_after_s: int,
    refused: Callable[[int], None] = lambda status: None,
) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol class) with the head deadline and the connection cap; one cap per class.
    A connection over the cap is told to retry after ``retry_after_s``, as a request refused by a full queue is.
    ``refused(status)`` is told of each 400, 408 and 503 it answers (no request reaches the app's metrics then)."""
    open_connections: set[asyncio.Protocol] = set()
    busy = f"server busy: {max_connections} connections open; retry later"
    too_many = _raw_response(503, "Service Unavailable", busy, f"retry-after: {retry_after_s}")
    timed_out = _raw_response(408, "Request Timeout", f"request not received within {read_timeout_s:g} s")

    class GuardedProtocol(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._heard = False  # bytes arrived since the deadline was armed
            self._guarded: asyncio.Transport | None = None
            inner = self.app  # uvicorn calls self.app once a request head is complete

            async def app(scope: Any, receive: Any, send: Any) -> None:
                self._disarm()
                try:
                    await inner(scope, receive, send)
                finally:
                    self._arm()

            self.app = app

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._guarded = transport
            if len(open_connections) >= max_connections:
                transport.write(too_many)
                transport.close()
                refused(503)
                return
            open_connections.add(self)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            open_connections.discard(self)
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._heard = True
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            """A request line or head uvicorn cannot parse: refused in JSON like every other refusal (uvicorn answers
            in plain text), and counted."""
            if self._guarded is not None and not self._guarded.is_closing():
                self._guarded.write(_raw_response(400, "Bad Request", f"malformed HTTP request ({msg.rstrip('.')})"))
                self._guarded.close()
            refused(400)

        def _arm(self) -> None:
            self._disarm()
            if self._guarded is None or self._guarded.is_closing():
                return
            self._heard = False
            self._deadline = asyncio.get_running_loop().call_later(read_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self._guarded is None or self._guarded.is_closing():
                return
            if self._heard:
                self._guarded.write(timed_out)
                refused(408)
            self._guarded.close()

    return GuardedProtocol
