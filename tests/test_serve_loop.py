"""The event loop stays free while a request's body is parsed: a large JSON body (base64 images, up to
--max-upload-mb) takes a tenth of a second to parse and decode, during which nothing else would be answered."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from _serve import image_bytes, load_tiny, save_tiny_model
from captionkit.serve import ServeSettings, create_app, uploads

pytestmark = pytest.mark.usefixtures("single_thread")


def test_other_requests_are_answered_while_a_json_body_is_parsed(tmp_path, monkeypatch):
    """The JSON parser is held (an event, not a sleep) until /healthz has answered: on the event loop it would hold
    /healthz too, which then answers only once the parser is let go."""
    entered, release = threading.Event(), threading.Event()
    parse_json = uploads.parse_json

    def held_parse_json(*args, **kwargs):
        entered.set()
        release.wait(10)  # bounded: on the event loop, /healthz waits this long, and the test fails
        return parse_json(*args, **kwargs)

    monkeypatch.setattr(uploads, "parse_json", held_parse_json)
    captioner = load_tiny(save_tiny_model(tmp_path / "tiny", seed=0))
    payload = {"images": [base64.b64encode(image_bytes()).decode()], "num_beams": 1, "max_length": 2}
    app = create_app({"tiny": captioner}, ServeSettings(max_wait_ms=0))
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        try:
            captioned = pool.submit(client.post, "/v1/captions", json=payload)
            assert entered.wait(30)
            health = pool.submit(client.get, "/healthz")
            assert health.result(timeout=5).json() == {"status": "ok"}  # answered while the body is being parsed
            assert not captioned.done()
        finally:
            release.set()
        assert captioned.result(timeout=60).status_code == 200
