"""Slow and greedy clients against a real uvicorn server on loopback (raw sockets, every wait bounded): an
unfinished request head or body is answered 408 and closed once the read timeout has passed, a silent connection is
closed, connections beyond the cap are answered 503 at once, and the server serves normally afterwards.

No test times the server against a window: a close must come no sooner than the read timeout (proving the timeout
closed it) and before a generous GIVE_UP_S (else the test fails rather than hangs)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from _serve import image_bytes, load_tiny, running_server, save_tiny_model
from captionkit.api import Captioner
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")

READ_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 4
GIVE_UP_S = 30.0  # a test waits at most this long for the server: far beyond READ_TIMEOUT_S, even on a loaded machine


@pytest.fixture(scope="module")
def captioner(tmp_path_factory) -> Captioner:
    return load_tiny(save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0))


@pytest.fixture(scope="module")
def url(captioner) -> Iterator[str]:
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


def until_closed(sock: socket.socket, trickle: bytes = b"") -> bytes:
    """Everything the server sends until it closes the connection; sends ``trickle`` a byte every 50 ms meanwhile.
    Fails (never hangs) if the server keeps the connection past GIVE_UP_S."""
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
    return received


def status_and_detail(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    return int(head.split(b" ")[1]), json.loads(body)["detail"]


def waited_out_the_read_timeout(since: float) -> bool:
    """Whether the read timeout has passed since ``since`` (taken before the server armed it): a close this late is
    the timeout's doing. Only a lower bound: a loaded machine may close later, never sooner. The 5% is for timer
    and clock granularity."""
    return time.monotonic() - since >= READ_TIMEOUT_S * 0.95


def connection_refusals(url: str, status: int) -> float:
    """How many connections the server at ``url`` answered ``status`` before any request reached its app."""
    line = f'captionkit_http_connection_refusals_total{{status="{status}"}} '
    rows = [row for row in httpx.get(f"{url}/metrics", timeout=GIVE_UP_S).text.splitlines() if row.startswith(line)]
    return float(rows[0].removeprefix(line)) if rows else 0.0


def test_unfinished_request_head_gets_408_and_is_closed(url):
    before = connection_refusals(url, 408)
    opened = time.monotonic()  # the head deadline runs from the connection's opening: no later than this
    with connect(url) as sock:
        sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\n")
        response = until_closed(sock, trickle=b"X-Slow: " + b"a" * 200)
    assert status_and_detail(response) == (408, f"request not received within {READ_TIMEOUT_S:g} s")
    assert waited_out_the_read_timeout(opened)  # the trickle kept it busy, not alive
    assert connection_refusals(url, 408) == before + 1  # counted, though no request reached the app


@pytest.mark.parametrize(
    "request_bytes",
    [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n"],
    ids=["request-line", "content-length", "nul-in-target"],
)
def test_a_request_http_cannot_parse_gets_a_json_400_and_is_counted(url, request_bytes):
    before = connection_refusals(url, 400)
    with connect(url) as sock:
        sock.sendall(request_bytes)
        response = until_closed(sock)
    status, detail = status_and_detail(response)  # JSON, as every refusal: uvicorn alone answers in plain text
    assert (status, detail.startswith("malformed HTTP request (")) == (400, True), detail
    assert connection_refusals(url, 400) == before + 1


def test_silent_connection_is_closed_without_a_word(url):
    opened = time.monotonic()
    with connect(url) as sock:
        response = until_closed(sock)
    assert response == b""
    assert waited_out_the_read_timeout(opened)


def test_trickled_body_gets_408_and_is_closed(url):
    head = b"POST /v1/captions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n"
    opened = time.monotonic()  # the body deadline runs from the head's arrival: later than this
    with connect(url) as sock:
        sock.sendall(head)
        response = until_closed(sock, trickle=b"{" + b" " * 4999)
    status, detail = status_and_detail(response)
    assert status == 408
    assert detail.startswith(f"request body: not received within {READ_TIMEOUT_S:g} s (")
    assert waited_out_the_read_timeout(opened)


# A request whose server says "100 Continue" (its app is reading the body) and whose 2-byte body has not been sent.
HELD_HEAD = (
    b"POST /v1/captions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
    b"expect: 100-continue\r\n\r\n"
)


def held_in_a_request(url: str) -> socket.socket:
    """A connection the server has accepted and counts, busy in a request that waits for its body: the server's
    100 Continue proves it got this far, whatever the scheduling."""
    sock = connect(url)
    sock.sendall(HELD_HEAD)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed a connection it should hold, after {received!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 100 "), received
    return sock


def served_again(url: str) -> int:
    """The status of GET /healthz once the server stops refusing connections for the cap (GIVE_UP_S at most): the
    server drops a closed connection from its count when it notices the close, not at once."""
    deadline = time.monotonic() + GIVE_UP_S
    while True:
        try:
            status = httpx.get(f"{url}/healthz", timeout=GIVE_UP_S).status_code
        except httpx.TransportError:  # refused and closed before the request was read: still over the cap
            status = 503
        if status != 503 or time.monotonic() > deadline:
            return status
        time.sleep(0.01)


def test_connections_beyond_the_cap_get_503_at_once(captioner):
    # A server of its own with an hour's read timeout: the held connections stay open however slowly this runs,
    # and a close of the extra one can only be the cap's doing.
    settings = ServeSettings(read_timeout_s=3600, max_connections=MAX_CONNECTIONS, max_wait_ms=0)
    app = create_app({"tiny": captioner}, settings)
    with running_server(app) as capped:
        held: list[socket.socket] = []
        try:
            for _ in range(MAX_CONNECTIONS):
                held.append(held_in_a_request(capped))
            with connect(capped) as extra:
                response = until_closed(extra)
            assert status_and_detail(response) == (503, f"server busy: {MAX_CONNECTIONS} connections open; retry later")
            assert b"retry-after: 1" in response.lower()
            # Counted in /metrics (read in this process: the cap holds every connection a GET would need).
            refusals = app.state.metrics.registry.get_sample_value(
                "captionkit_http_connection_refusals_total", {"status": "503"}
            )
            assert refusals == 1
            for sock in held:  # the held requests go on: each is answered once its body comes
                sock.sendall(b"{}")
                assert one_response(sock).startswith(b"HTTP/1.1 422 ")
        finally:
            for sock in held:
                sock.close()
        assert served_again(capped) == 200  # closed connections leave the count


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
            last_request = time.monotonic()  # the idle deadline runs from the response: later than this
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = one_response(sock)
            assert response.startswith(b"HTTP/1.1 200") and response.endswith(b'{"status":"ok"}')
        response = until_closed(sock)
    assert response == b""
    assert waited_out_the_read_timeout(last_request)
