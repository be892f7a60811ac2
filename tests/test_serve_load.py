"""`captionkit serve` under load and abuse, through a real uvicorn server on loopback: many concurrent clients with
mixed decoding options get the answers they get alone (and share batches), a client that abandons its upload is
counted as gone (499), not as a server error, a body over the upload limit closes the connection at once instead of
being read (and thrown away) until the read timeout, queued images hold no more pixels than the model takes, and a
stop during a burst finishes every request in flight."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from _serve import free_port, image_bytes, load_tiny, read_response, running_server, save_tiny_model
from captionkit.api import Captioner
from captionkit.serve import ServeSettings, create_app
from captionkit.serve.connections import uvicorn_options
from captionkit.text.styles import add_style_tokens

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = "/v1/captions"
MiB = 1024 * 1024
# Decoding options a busy intranet mixes: greedy, beams with n-best, styles, seeded sampling.
OPTIONS = (
    {"num_beams": "1", "max_length": "5"},
    {"num_beams": "3", "n_best": "2", "max_length": "5"},
    {"num_beams": "2", "max_length": "5", "style": "positive"},
    {"num_beams": "2", "max_length": "5", "style": "negative"},
    {"do_sample": "true", "seed": "5", "n_best": "2", "max_length": "5"},
)


@pytest.fixture(scope="module")
def styled(tmp_path_factory) -> Captioner:
    """A tiny model that writes styles (its style rows random, so each style captions differently)."""
    captioner = load_tiny(save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=1))
    add_style_tokens(captioner.tokenizer)
    captioner.model.resize_vocabulary(captioner.tokenizer.vocab_size)
    return captioner


def distinct_image(index: int) -> bytes:
    """A PNG that differs from the others of another ``index`` (a gradient turned by a different angle)."""
    buffer = io.BytesIO()
    Image.linear_gradient("L").rotate(index * 37).resize((48, 40)).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def captions_of(answer: dict) -> list[list[tuple[str, float]]]:
    """Each result's n-best (caption, score)."""
    return [[(c["caption"], c["score"]) for c in result["captions"]] for result in answer["results"]]


def assert_same(served: list[list[tuple[str, float]]], alone: list[list[tuple[str, float]]]) -> None:
    """The same captions in the same order, and the same scores but for the last bits: a batch's sums of float32
    products may round otherwise than a lone image's."""
    assert [[caption for caption, _ in n_best] for n_best in served] == [[c for c, _ in n_best] for n_best in alone]
    scores = [score for n_best in alone for _, score in n_best]
    assert [score for n_best in served for _, score in n_best] == pytest.approx(scores, abs=1e-4)


def metric(url: str, status: int) -> float:
    """How many ``POST /v1/captions`` the server at ``url`` has answered ``status`` (0 when none)."""
    line = f'captionkit_http_requests_total{{path="{CAPTIONS}",status="{status}"}} '
    rows = [row for row in httpx.get(f"{url}/metrics", timeout=30).text.splitlines() if row.startswith(line)]
    return float(rows[0].removeprefix(line)) if rows else 0.0


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def test_fifty_concurrent_clients_get_their_own_answers_in_batches(styled):
    images = [distinct_image(index) for index in range(4)]
    settings = ServeSettings(max_batch=8, max_wait_ms=5, max_queue=128, request_timeout_s=60)
    app = create_app({"styled": styled}, settings)
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:  # each request alone first: the reference
            alone = {
                (option, index): captions_of(
                    client.post(CAPTIONS, files={"image": ("a.png", image)}, data=params).json()
                )
                for option, params in enumerate(OPTIONS)
                for index, image in enumerate(images)
            }
        before = metric(url, 200)

        async def one_client(number: int, client: httpx.AsyncClient) -> list[tuple[int, int, int, dict]]:
            """Two requests in a row, each of 1 or 2 copies of an image, with options drawn by ``number``."""
            draw = random.Random(number)
            answers = []
            for _ in range(2):
                option, index, copies = draw.randrange(len(OPTIONS)), draw.randrange(len(images)), draw.choice((1, 2))
                files = [("image", (f"{index}.png", images[index]))] * copies
                response = await client.post(CAPTIONS, files=files, data=OPTIONS[option])
                assert response.status_code == 200, response.text
                answers.append((option, index, copies, response.json()))
            return answers

        async def burst() -> list[list[tuple[int, int, int, dict]]]:
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                return await asyncio.gather(*(one_client(number, client) for number in range(50)))

        answers = [answer for client_answers in asyncio.run(burst()) for answer in client_answers]
        answered = metric(url, 200) - before
        batches = httpx.get(f"{url}/metrics", timeout=30).text
    assert len(answers) == 100
    for option, index, copies, answer in answers:
        assert [result["image"] for result in answer["results"]] == [f"{index}.png"] * copies
        # Seeded sampling draws image j of a request from seed + j: only its first image is the lone request's.
        served = captions_of(answer)[:1] if "seed" in OPTIONS[option] else captions_of(answer)
        assert_same(served, alone[(option, index)] * len(served))
    assert answered == 100  # no request lost, none answered twice
    model_calls = float(next(r for r in batches.splitlines() if r.startswith("captionkit_batch_size_count")).split()[1])
    images_sent = sum(copies for _, _, copies, _ in answers) + len(alone)
    assert model_calls < images_sent  # concurrent requests shared model calls


def test_a_client_that_abandons_its_upload_is_counted_gone_not_as_a_server_error(styled):
    """Before, the abandoned body raised out of the app: a traceback in the log and a 500 in /metrics (an
    alert on the error rate) for what a client did."""
    with running_server(create_app({"styled": styled}, ServeSettings(max_wait_ms=0))) as url:
        with connect(url) as sock:
            head = "POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            sock.sendall(f"{head}Expect: 100-continue\r\nContent-Length: 100000\r\n\r\n".encode())
            assert read_response(sock)[0] == 100  # the app is reading the body: part of it comes, then the client goes
            sock.sendall(b"--b\r\n" + b"x" * 1000)
        deadline = time.monotonic() + 30
        while metric(url, 499) + metric(url, 500) == 0:
            assert time.monotonic() < deadline, "the abandoned request was never counted"
            time.sleep(0.02)
        assert (metric(url, 499), metric(url, 500)) == (1.0, 0.0)
        assert httpx.post(f"{url}{CAPTIONS}", files={"image": ("a.png", distinct_image(0))}).status_code == 200


@pytest.fixture(scope="module")
def small_limit(styled) -> Iterator[str]:
    """A server taking bodies of 1 MiB, with a read timeout far beyond any test: a close is the 413's doing."""
    settings = ServeSettings(max_upload_bytes=MiB, read_timeout_s=120, max_wait_ms=0)
    with running_server(create_app({"styled": styled}, settings)) as url:
        yield url


def test_a_declared_body_over_the_limit_is_refused_and_the_connection_closed(small_limit):
    with connect(small_limit) as sock:
        sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 1000000000\r\n\r\n")
        status, headers, body = read_response(sock)
        assert (status, headers["connection"]) == (413, "close")
        assert body == b'{"detail":"request body: over the 1 MiB upload limit"}'
        assert sock.recv(100) == b""  # closed now: the server does not wait for a gigabyte it will not use


def test_a_streamed_body_over_the_limit_stops_being_read(small_limit):
    """Chunked, with no length to refuse it by: refused once 1 MiB has come, then closed. Before, the server read
    and discarded whatever came until the read timeout (gigabytes a minute on a fast link), then wrote a second
    answer, a 408, after the 413."""
    with connect(small_limit) as sock:
        sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % (64 * 1024) + b"a" * 64 * 1024 + b"\r\n"
        sent = 0
        try:
            while sent < 256 * MiB:  # far beyond what socket buffers hold: the server must have stopped reading
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        assert sent < 256 * MiB
        received = b""
        try:
            while piece := sock.recv(65536):
                received += piece
        except ConnectionResetError:
            pass
    assert received.startswith(b"HTTP/1.1 413 ")
    assert received.endswith(b'\r\n\r\n{"detail":"request body: over the 1 MiB upload limit"}')  # one answer only


def test_queued_images_are_kept_at_the_size_the_model_takes(styled, monkeypatch):
    """A megabyte of compressible PNGs is gigabytes of pixels: before, each queued image was held at its full size
    (16 images of 40 MP, 4 requests deep in a 64-image queue: 7.7 GB), and a few small uploads could exhaust the
    server's memory. Now an image waits at the size the model's preprocessing resizes it to, for the same captions
    and attention box."""
    photo = io.BytesIO()
    Image.linear_gradient("L").resize((1600, 1200)).convert("RGBA").save(photo, "PNG")
    seen: list[tuple[int, int]] = []
    run = styled.caption_pil

    def recording(images, *args):
        seen.extend(image.size for image in images)
        return run(images, *args)

    monkeypatch.setattr(styled, "caption_pil", recording)
    settings = ServeSettings(max_wait_ms=0)
    with running_server(create_app({"styled": styled}, settings)) as url:
        params = {"num_beams": "2", "n_best": "2", "max_length": "5", "attention": "true"}
        answer = httpx.post(f"{url}{CAPTIONS}", files={"image": ("big.png", photo.getvalue())}, data=params, timeout=60)
    assert answer.status_code == 200, answer.text
    assert seen == [(32, 32)]  # the tiny model's input size, not 1600x1200
    full = run([Image.open(photo)], styled.decoding_config(num_beams=2, num_return_sequences=2, max_new_tokens=5))
    result = answer.json()["results"][0]
    assert [(c["caption"], c["score"]) for c in result["captions"]] == [(c.caption, c.score) for c in full[0]]
    assert result["attention_box"] == [0, 0, 1, 1]


def test_a_stop_during_a_burst_finishes_every_request_in_flight_and_refuses_new_ones(styled):
    """Twenty requests are in flight (each has had the server's 100 Continue: the app waits for its body) when
    uvicorn is told to stop as SIGTERM tells it; new connections are then refused, the twenty bodies go out, and
    each gets its captions before the server ends. (The CLI's exit code 0 is test_serve_api's, on one request.)"""
    import uvicorn

    app = create_app({"styled": styled}, ServeSettings(max_wait_ms=50, read_timeout_s=300, request_timeout_s=300))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(app))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    body = json.dumps({"images": [base64.b64encode(image_bytes()).decode()], "num_beams": 2, "max_length": 5})
    head = "POST /v1/captions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nexpect: 100-continue\r\n"
    head += f"content-length: {len(body)}\r\n\r\n"
    sockets: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        for _ in range(20):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=30))
            sockets[-1].sendall(head.encode())
        assert [read_response(sock)[0] for sock in sockets] == [100] * 20
        server.handle_exit(signal.SIGTERM, None)  # what uvicorn's own SIGTERM handler does
        deadline = time.monotonic() + 30
        while True:  # the listening socket closes soon after, while the twenty are still open
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections after the stop"
            time.sleep(0.02)
        for sock in sockets:
            sock.sendall(body.encode())
        answers = [read_response(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
        server.should_exit = True
        thread.join(timeout=30)
    assert [status for status, _, _ in answers] == [200] * 20, answers[0]
    assert {json.loads(answer)["results"][0]["image"] for _, _, answer in answers} == {"images[0]"}
    assert not thread.is_alive() and app.state.ready is False  # it ended, through the app's own shutdown
