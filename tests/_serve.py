"""Helpers for the serve tests: tiny saved captioners, image bytes, and a real uvicorn server on loopback."""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from PIL import Image

import _helpers as helpers
from captionkit.api import Captioner
from captionkit.serve.connections import uvicorn_options

CAPTIONS = ("a dog runs on the grass", "a cat sits on a red couch", "two birds fly over the sea")


def save_tiny_model(directory: Path, seed: int) -> Path:
    """A tiny random ViT+GPT-2 checkpoint (32 px input) with a BPE tokenizer trained on a few captions."""
    return helpers.save_tiny_model(directory, seed=seed, captions=CAPTIONS)


def load_tiny(directory: Path) -> Captioner:
    return Captioner.from_pretrained(directory, device="cpu")


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (48, 40), mode: str = "RGB", **save: object) -> bytes:
    """A small gradient image encoded as ``fmt``."""
    image = Image.linear_gradient("L").resize(size).convert(mode) if mode != "L" else Image.linear_gradient("L")
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(app: FastAPI, **config: object) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a loopback port in a thread, with the connection limits of its settings (as
    ``captionkit serve`` runs it) and any other uvicorn ``config`` (``root_path=...``); yields the base URL."""
    import uvicorn

    port = free_port()
    options = uvicorn_options(app) | config
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response: status, headers (lower-case names) and its Content-Length body (none for an interim 1xx)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after sending {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection inside the body"
        body += chunk
    return int(status_line.split(" ")[1]), headers, body


@contextmanager
def prefix_proxy(backend: str, prefix: str, forwarded_prefix: bool = False) -> Iterator[tuple[str, list[str]]]:
    """A reverse proxy on loopback serving ``backend`` (a base URL) under ``prefix``, which it strips (nginx's
    ``location /captions/ { proxy_pass http://backend/; }``), saying it in ``X-Forwarded-Prefix`` if asked; paths
    outside the prefix are 404. Yields the proxy's base URL and the list of paths it is asked for."""
    target = urlsplit(backend)
    asked: list[str] = []

    class Forward(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.forward()

        def do_POST(self) -> None:
            self.forward()

        def forward(self) -> None:
            asked.append(self.path)
            if self.path != prefix and not self.path.startswith(prefix + "/"):
                self.send_error(404, "outside the proxied prefix")
                return
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "x-forwarded-prefix")}
            if forwarded_prefix:
                headers["X-Forwarded-Prefix"] = prefix
            upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
            try:
                upstream.request(self.command, self.path[len(prefix) :] or "/", body=body, headers=headers)
                answer = upstream.getresponse()
                content = answer.read()
            finally:
                upstream.close()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length", "date", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    proxy.daemon_threads = True
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", asked
    finally:
        proxy.shutdown()
        proxy.server_close()
