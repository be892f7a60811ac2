"""The event loop stays free while a request's body is parsed: a large JSON body (base64 images, up to
--max-upload-mb) takes a tenth of a second to parse and decode, during which nothing else would be answered."""

from __future__ import annotations

import asyncio
import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

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


def test_the_event_loop_gets_turns_while_a_multipart_body_is_parsed():
    """Starlette's form parser runs on the event loop; the body goes to it in slices, with a turn for other tasks
    between them (in one piece, an 18 MB body held the loop for about 0.08 s)."""
    boundary = "captionkitboundary"
    photo = image_bytes()
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p{i}.png"\r\n'.encode()
        + b"Content-Type: image/png\r\n\r\n"
        + photo
        + b"\x00" * uploads.MULTIPART_SLICE_BYTES  # trailing bytes after a PNG's end are ignored by decoders
        + b"\r\n"
        for i in range(3)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
    }
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    async def parse() -> tuple[list[uploads.Upload], int]:
        ticking = asyncio.create_task(other_task())
        await asyncio.sleep(0)  # the other task starts
        started = turns
        try:
            found, _ = await uploads._parse_multipart(Request(scope), body, ServeSettings(max_images=4))
        finally:
            ticking.cancel()
        return found, turns - started

    found, turns_while_parsing = asyncio.run(parse())
    assert [upload.name for upload in found] == ["p0.png", "p1.png", "p2.png"]
    assert found[0].data.startswith(photo)
    assert turns_while_parsing >= len(body) // uploads.MULTIPART_SLICE_BYTES
