"""A client that leaves (a closed tab, a killed script) while its images wait for the model: they leave the queue
at once instead of holding queue places and model time for an answer nobody reads (until --timeout-s)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from _serve import image_bytes, load_tiny, running_server, save_tiny_model
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")


class Held:
    """Wraps a captioner's caption_pil: records each call's batch size and holds every call until ``release``."""

    def __init__(self, captioner) -> None:
        self.inner = captioner.caption_pil
        self.batches: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, images, *args, **kwargs):
        self.batches.append(len(images))
        self.started.set()
        self.release.wait(60)  # bounded: a test that never releases fails, it does not hang
        return self.inner(images, *args, **kwargs)


def multipart_request(port: int, images: int) -> bytes:
    boundary = uuid.uuid4().hex
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{i}.jpg"\r\n'.encode()
        + b"Content-Type: image/jpeg\r\n\r\n"
        + image_bytes()
        + b"\r\n"
        for i in range(images)
    )
    body = parts + f"--{boundary}--\r\n".encode()
    head = (
        f"POST /v1/captions?num_beams=1&max_length=2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def wait_for(condition, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_client_that_leaves_takes_its_images_out_of_the_queue(tmp_path, monkeypatch):
    captioner = load_tiny(save_tiny_model(tmp_path / "tiny", seed=0))
    held = Held(captioner)
    monkeypatch.setattr(captioner, "caption_pil", held)
    app = create_app({"tiny": captioner}, ServeSettings(max_batch=1, max_wait_ms=0, request_timeout_s=60))
    batcher = app.state.batchers["tiny"]
    with running_server(app) as url, ThreadPoolExecutor(1) as pool:
        port = int(url.rsplit(":", 1)[1])
        try:
            files = {"image": ("first.jpg", image_bytes())}
            first = pool.submit(httpx.post, url + "/v1/captions?num_beams=1&max_length=2", files=files, timeout=60)
            assert held.started.wait(60)  # the first request holds the model
            with socket.create_connection(("127.0.0.1", port), timeout=10) as leaving:
                leaving.sendall(multipart_request(port, images=3))
                wait_for(lambda: batcher.queued == 3, "the second request's images never queued")
            # The connection is closed: its images leave the queue now, not after the 60 s time limit.
            wait_for(lambda: batcher.queued == 0, f"the images of a client that left stayed queued: {batcher.queued}")
        finally:
            held.release.set()
        assert first.result().status_code == 200
        # Counted as nginx counts a client that closed its request (nobody reads the answer).
        gone = 'captionkit_http_requests_total{path="/v1/captions",status="499"} 1.0'
        wait_for(lambda: gone in httpx.get(url + "/metrics").text, "the request that was left is not counted 499")
    assert held.batches == [1]  # the model never ran the images nobody waits for
