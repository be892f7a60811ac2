"""What decoding a request's images costs the server: each image is shrunk to the model's size before the next is
decoded, only ``max_image_loads`` requests decode at once (the others wait their turn, within their time limit),
and a connection over the cap is told the same Retry-After as a request refused by a full queue."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _serve import image_bytes, load_tiny, read_response, running_server, save_tiny_model
from captionkit.api import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.errors import ConfigError
from captionkit.images import load_image
from captionkit.serve import ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("single_thread")

LARGE = (2000, 1500)  # 12 MB decoded as RGB, a few kB as a PNG
GIVE_UP_S = 30.0  # the longest a test waits for the server: it fails rather than hangs


@pytest.fixture(scope="module")
def captioner(tmp_path_factory) -> Captioner:
    return load_tiny(save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0))


def large_png(shade: int) -> bytes:
    """A compressible PNG of LARGE pixels: a gradient, different for each ``shade``."""
    image = Image.linear_gradient("L").resize(LARGE).point(lambda value: (value + shade) % 256).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def post(client: TestClient, images: list[bytes], **params: object):
    files = [("image", (f"photo{index}.png", data, "image/png")) for index, data in enumerate(images)]
    return client.post("/v1/captions", files=files, data={key: str(value) for key, value in params.items()})


class LiveImages:
    """Wraps load_image: counts the images it decoded that are still alive, and the most alive at once."""

    def __init__(self, load) -> None:
        self.load = load
        self.lock = threading.Lock()
        self.alive = 0
        self.peak = 0
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, *args, **kwargs) -> Image.Image:
        image = self.load(*args, **kwargs)
        with self.lock:
            self.alive += 1
            self.peak = max(self.peak, self.alive)
            self.sizes.append(image.size)
        weakref.finalize(image, self._freed)
        return image

    def _freed(self) -> None:
        with self.lock:
            self.alive -= 1


def test_a_request_holds_one_full_size_image_at_a_time(captioner, monkeypatch):
    from captionkit.serve import uploads

    live = LiveImages(uploads.load_image)
    monkeypatch.setattr(uploads, "load_image", live)
    images = [large_png(shade) for shade in (0, 60, 120, 180)]
    assert all(len(data) < 200_000 for data in images)  # small to send, 12 MB each once decoded
    with TestClient(create_app({"tiny": captioner}, ServeSettings(max_wait_ms=0))) as client:
        response = post(client, images, num_beams=1, max_length=8)
    assert response.status_code == 200, response.text
    assert live.sizes == [LARGE] * 4
    assert live.peak == 1 and live.alive == 0
    body = response.json()
    assert [result["image"] for result in body["results"]] == [f"photo{index}.png" for index in range(4)]
    # The captions are those of the images decoded at full size, as the model would see them one by one.
    expected = captioner.caption_pil(
        [load_image(data) for data in images], DecodingConfig(num_beams=1, max_new_tokens=8)
    )
    assert [result["caption"] for result in body["results"]] == [captions[0].caption for captions in expected]


class HeldLoads:
    """Wraps the app's load_uploads: counts the requests decoding at once (and the most), each held until
    ``release`` is set."""

    def __init__(self, load) -> None:
        self.load = load
        self.changed = threading.Condition()
        self.active = 0
        self.peak = 0
        self.release = threading.Event()

    def __call__(self, *args):
        with self.changed:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.changed.notify_all()
        try:
            self.release.wait(GIVE_UP_S)
            return self.load(*args)
        finally:
            with self.changed:
                self.active -= 1

    def wait_for(self, active: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.active == active, GIVE_UP_S)


@pytest.fixture
def held(monkeypatch) -> HeldLoads:
    from captionkit.serve import app as app_module

    loads = HeldLoads(app_module.load_uploads)
    monkeypatch.setattr(app_module, "load_uploads", loads)
    yield loads
    loads.release.set()  # a failing test does not leave threads waiting


def test_at_most_max_image_loads_requests_decode_at_once(captioner, held):
    settings = ServeSettings(max_image_loads=2, max_wait_ms=0)
    with TestClient(create_app({"tiny": captioner}, settings)) as client, ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(post, client, [image_bytes("PNG")], num_beams=1) for _ in range(5)]
        assert held.wait_for(2)
        time.sleep(0.3)  # time for a third request to start decoding, if one could: none must
        assert held.active == 2
        held.release.set()
        assert [future.result().status_code for future in futures] == [200] * 5
    assert held.peak == 2


def test_a_request_whose_time_runs_out_waiting_for_its_turn_answers_504(captioner, held):
    settings = ServeSettings(max_image_loads=1, request_timeout_s=0.5, max_wait_ms=0)
    with TestClient(create_app({"tiny": captioner}, settings)) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, client, [image_bytes("PNG")], num_beams=1)
        assert held.wait_for(1)
        waiting = post(client, [image_bytes("PNG")], num_beams=1)
        assert waiting.status_code == 504
        assert waiting.json()["detail"] == "model 'tiny': no answer within 0.5 s"
        assert held.peak == 1  # it never decoded
        held.release.set()
        assert first.result().status_code == 504  # held by the test past its own time limit
        assert post(client, [image_bytes("PNG")], num_beams=1).status_code == 200  # the turn was given back


def test_max_image_loads_defaults_to_the_usable_cpus_and_is_checked():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert ServeSettings().max_image_loads == cpus
    with pytest.raises(ConfigError) as refused:
        ServeSettings(max_image_loads=0)
    assert str(refused.value) == "serve.max_image_loads: must be a positive integer, got 0"


def test_connections_over_the_cap_are_told_the_settings_retry_after(captioner):
    settings = ServeSettings(max_connections=1, retry_after_s=7, read_timeout_s=3600, max_wait_ms=0)
    with running_server(create_app({"tiny": captioner}, settings)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=GIVE_UP_S) as held_open:
            # Answered and kept alive: the server counts this connection before the next one opens.
            held_open.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_response(held_open)[0] == 200
            with socket.create_connection((host, int(port)), timeout=GIVE_UP_S) as extra:
                status, headers, body = read_response(extra)
    assert status == 503
    assert headers["retry-after"] == "7"
    assert body == b'{"detail": "server busy: 1 connections open; retry later"}'
