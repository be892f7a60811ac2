"""Slow and greedy clients against a real uvicorn server on loopback (raw sockets, every wait bounded): an
unfinished request head or body is answered 408 and closed within the read timeout, a silent connection is closed,
connections beyond the cap are answered 503 at once, and the server serves normally afterwards."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from _serve import image_bytes, load_tiny, running_server, save_tiny_model
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")

READ_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 4
GIVE_UP_S = 6.0  # a test waits at most this long for the server to close a connection


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    captioner = load_tiny(save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0))
    settings = ServeSettings(read_timeout_s=READ_TIMEOUT_S, max_connections=MAX_CONNECTIONS, max_wait_ms=0)
    with running_server(create_app({"tiny": captioner}, settings)) as base:
        yield base


@pytest.fixture(autouse=True)
def still_serving(url):
    """After every case, the server still captions a good image."""
    yield
    response = httpx.post(f"{url}/v1/captions", files={"image": ("a.jpg", image_bytes())}, timeout=30)
    assert response.status_code == 200, response.text


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=GIVE_UP_S)


def until_closed(sock: socket.socket, trickle: bytes = b"") -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took; sends ``trickle`` a
    byte every 50 ms meanwhile. Fails (never hangs) if the server keeps the connection past GIVE_UP_S."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.05)
    while time.monotonic() - started < GIVE_UP_S:
        if trickle:
            try:
                sock.sendall(trickle[:1])
            except OSError:  # the server closed its side: read what it said
                trickle = b""
            trickle = trickle[1:]
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        pytest.fail(f"the server held the connection for {GIVE_UP_S} s")
    return received, time.monotonic() - started


def status_and_detail(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    return int(head.split(b" ")[1]), json.loads(body)["detail"]


def test_unfinished_request_head_gets_408_and_is_closed(url):
    with connect(url) as sock:
        sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\n")
        response, seconds = until_closed(sock, trickle=b"X-Slow: " + b"a" * 200)
    assert status_and_detail(response) == (408, f"request not received within {READ_TIMEOUT_S:g} s")
    assert READ_TIMEOUT_S * 0.8 < seconds < READ_TIMEOUT_S + 2


def test_silent_connection_is_closed_without_a_word(url):
    with connect(url) as sock:
        response, seconds = until_closed(sock)
    assert response == b""
    assert READ_TIMEOUT_S * 0.8 < seconds < READ_TIMEOUT_S + 2


def test_trickled_body_gets_408_and_is_closed(url):
    head = b"POST /v1/captions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n"
    with connect(url) as sock:
        sock.sendall(head)
        response, seconds = until_closed(sock, trickle=b"{" + b" " * 4999)
    status, detail = status_and_detail(response)
    assert status == 408
    assert detail.startswith(f"request body: not received within {READ_TIMEOUT_S:g} s (")
    assert READ_TIMEOUT_S * 0.8 < seconds < READ_TIMEOUT_S + 2


def test_connections_beyond_the_cap_get_503_at_once(url):
    held = [connect(url) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)  # the server has accepted them all
        with connect(url) as extra:
            response, seconds = until_closed(extra)
        assert status_and_detail(response) == (503, f"server busy: {MAX_CONNECTIONS} connections open; retry later")
        assert b"retry-after: 1" in response.lower()
        assert seconds < READ_TIMEOUT_S + 2  # answered, not left to time out (which would say nothing)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.1)  # closed connections leave the count; the next request (still_serving) gets through


def one_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body), however the server splits it into packets."""
    sock.settimeout(GIVE_UP_S)
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))[15:])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_keep_alive_connection_serves_requests_then_times_out(url):
    with connect(url) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = one_response(sock)
            assert response.startswith(b"HTTP/1.1 200") and response.endswith(b'{"status":"ok"}')
        response, seconds = until_closed(sock)
    assert response == b""
    assert seconds < READ_TIMEOUT_S + 2
