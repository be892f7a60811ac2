"""`captionkit serve`: the API on two tiny models, micro-batching, limits, metrics, the CLI and graceful shutdown."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _helpers import run_cli
from _serve import free_port, image_bytes, load_tiny, read_response, running_server, save_tiny_model
from captionkit import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.errors import ConfigError
from captionkit.images import load_image
from captionkit.serve import ServeSettings, create_app
from captionkit.serve.loadtest import percentile, run_load
from captionkit.serve.metrics import Metrics
from captionkit.text.styles import add_style_tokens

pytestmark = pytest.mark.usefixtures("single_thread")
# An absolute or protocol-relative URL where a page would load something from.
EXTERNAL = re.compile(r"""((src|href)=|url\(|@import|fetch\()\s*["'`]?(https?:)?//""")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny_model(root / "base", seed=0), save_tiny_model(root / "tuned", seed=1)


@pytest.fixture(scope="module")
def captioners(model_dirs):
    return {"base": load_tiny(model_dirs[0]), "tuned": load_tiny(model_dirs[1])}


@pytest.fixture(scope="module")
def client(captioners):
    with TestClient(create_app(captioners, ServeSettings(max_wait_ms=0))) as test_client:
        yield test_client


class SlowCounting:
    """Wraps a captioner's caption_pil: counts calls and batch sizes, and waits before each call until ``release``
    is set (a test clears it to hold the model: an event, never a sleep, decides what happens meanwhile)."""

    def __init__(self, captioner) -> None:
        self.inner = captioner.caption_pil
        self.batches: list[int] = []
        self.started = threading.Event()
        self.finished = threading.Event()  # set when a call returns
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()

    def __call__(self, images, config, image_offset=0, attention=False, starts=None):
        with self.lock:
            self.batches.append(len(images))
        self.started.set()
        self.release.wait(60)  # bounded: a test that never releases fails on its results, it does not hang
        try:
            return self.inner(images, config, image_offset, attention, starts)
        finally:
            self.finished.set()


def slow_counting(captioner, monkeypatch) -> SlowCounting:
    """Route the captioner's model calls through a :class:`SlowCounting` for this test."""
    counting = SlowCounting(captioner)
    monkeypatch.setattr(captioner, "caption_pil", counting)
    return counting


def post_image(client, data: bytes | None = None, name: str = "photo.jpg", **params):
    files = [("image", (name, data if data is not None else image_bytes(), "image/jpeg"))]
    return client.post("/v1/captions", files=files, data={k: str(v) for k, v in params.items()})


def test_multipart_caption_matches_the_captioner(client, captioners):
    response = post_image(client, num_beams=3, n_best=3, max_length=8)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "base" and body["style"] == "neutral"
    assert body["decoding"]["num_beams"] == 3 and body["decoding"]["n_best"] == 3
    assert body["decoding"]["max_length"] == 8
    [result] = body["results"]
    assert result["image"] == "photo.jpg" and result["index"] == 0
    scores = [c["score"] for c in result["captions"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert result["caption"] == result["captions"][0]["caption"]
    expected = captioners["base"].caption_pil(
        [load_image(image_bytes())], DecodingConfig(num_beams=3, num_return_sequences=3, max_new_tokens=8)
    )[0]
    assert [c["caption"] for c in result["captions"]] == [c.caption for c in expected]
    assert scores == pytest.approx([c.score for c in expected])
    assert isinstance(body["latency_ms"], float | int)  # a timing: its value is not the test's to judge


def test_json_base64_and_model_choice(client, captioners):
    png = image_bytes("PNG")
    images = [base64.b64encode(png).decode(), "data:image/png;base64," + base64.b64encode(png).decode()]
    response = client.post("/v1/captions?model=tuned", json={"images": images, "num_beams": 1, "max_length": 6})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tuned"
    assert [r["image"] for r in body["results"]] == ["images[0]", "images[1]"]
    expected = captioners["tuned"].caption_pil([load_image(png)], DecodingConfig(max_new_tokens=6))[0][0].caption
    assert [r["caption"] for r in body["results"]] == [expected, expected]


def test_several_images_keep_their_order_and_names(client):
    files = [("image", (f"img{i}.png", image_bytes("PNG", size=(20 + 10 * i, 30)), "image/png")) for i in range(3)]
    response = client.post("/v1/captions", files=files, data={"num_beams": "2", "max_length": "5"})
    assert response.status_code == 200, response.text
    assert [(r["index"], r["image"]) for r in response.json()["results"]] == [(i, f"img{i}.png") for i in range(3)]


def test_seeded_sampling_repeats(client):
    params = {"do_sample": "true", "seed": "7", "n_best": "3", "max_length": "8", "temperature": "1.5"}
    first = post_image(client, **params).json()["results"][0]["captions"]
    again = post_image(client, **params).json()["results"][0]["captions"]
    assert first == again
    assert len(first) == 3


def test_models_health_ready_and_docs(client):
    models = client.get("/v1/models").json()
    assert models["default"] == "base"
    assert [m["name"] for m in models["models"]] == ["base", "tuned"]
    assert all(m["styles"] == ["neutral"] and m["attention"] is True for m in models["models"])  # vit-gpt2 attends
    assert models["models"][0]["parameters"] > 1000
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": ["base", "tuned"]}
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/captions"]["post"]
    beams = next(p for p in operation["parameters"] if p["name"] == "num_beams")
    assert beams["schema"]["maximum"] == ServeSettings().max_beams
    assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "application/json"}


def test_pages_and_docs_use_no_external_assets(client):
    for path in ("/", "/docs", "/static/app.js", "/static/docs.js", "/static/style.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        # No CDN: every script, stylesheet, image, import and fetch is same-origin.
        assert not EXTERNAL.search(response.text), path
    assert '<script src="static/app.js">' in client.get("/").text
    assert '<script src="static/docs.js">' in client.get("/docs").text


def test_metrics_count_requests_errors_and_batches(client):
    post_image(client, num_beams=1)
    post_image(client, num_beams=0)
    text = client.get("/metrics").text
    assert re.search(r'captionkit_http_requests_total\{path="/v1/captions",status="200"\} [1-9]', text)
    assert re.search(r'captionkit_http_errors_total\{path="/v1/captions",status="422"\} [1-9]', text)
    assert re.search(r'captionkit_http_request_duration_seconds_count\{path="/v1/captions"\} [1-9]', text)
    assert re.search(r'captionkit_batch_size_bucket\{le="1.0",model="base"\} [1-9]', text)
    assert 'captionkit_queue_images{model="base"} 0.0' in text
    client.get("/no/such/page")
    assert 'path="other",status="404"' in client.get("/metrics").text


def test_metrics_have_the_standard_collectors_and_one_registry_per_app(captioners):
    with TestClient(create_app(captioners)) as first, TestClient(create_app(captioners)) as second:
        post_image(first, num_beams=1)
        text = first.get("/metrics").text
        other = second.get("/metrics").text
    for series in ("process_resident_memory_bytes", "python_info", "python_gc_collections_total"):
        assert re.search(rf"^{series}(\{{.*\}})? \S+$", text, re.MULTILINE), series
    assert re.search(r'captionkit_http_requests_total\{path="/v1/captions",status="200"\} 1.0', text)
    assert 'path="/v1/captions"' not in other  # the second app counted nothing of the first one's requests


def wait_until_queued(client, images: int, model: str = "base") -> None:
    """Poll the model's batcher until ``images`` images wait in its queue (60 s at most, then fail)."""
    batcher = client.app.state.batchers[model]
    deadline = time.monotonic() + 60
    while batcher.queued < images and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.queued == images


def queued_together(client, counting: SlowCounting, pool: ThreadPoolExecutor, posts: list[dict]) -> list:
    """Send ``posts`` (each one image, with those parameters) while the model is held in a first call, wait until
    all their images are queued, then release the model: the batcher finds them all waiting at once, however the
    posts were scheduled. The futures of their responses; the first call is ``counting.batches[0]``."""
    counting.release.clear()
    try:
        first = pool.submit(post_image, client, num_beams=1, max_length=5)
        assert counting.started.wait(60)  # the worker is in the model: what comes now queues behind it
        answers = [pool.submit(post_image, client, **params) for params in posts]
        wait_until_queued(client, len(posts))
    finally:
        counting.release.set()
    assert first.result().status_code == 200
    return answers


@pytest.mark.parametrize(("max_batch", "calls"), [(4, 1), (1, 4)])
def test_micro_batching_joins_concurrent_requests(captioners, monkeypatch, max_batch, calls):
    counting = slow_counting(captioners["base"], monkeypatch)
    # max_wait 0: whatever is queued when the model frees up is one batch of up to max_batch; no timing decides.
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=0)
    with TestClient(create_app(captioners, settings)) as client, ThreadPoolExecutor(5) as pool:
        answers = queued_together(client, counting, pool, [{"num_beams": 2, "max_length": 5}] * 4)
        assert [a.result().status_code for a in answers] == [200] * 4
        metrics = client.get("/metrics").text
    assert counting.batches == [1] + [max_batch] * calls
    assert f'captionkit_batch_size_count{{model="base"}} {calls + 1}.0' in metrics


def test_a_lone_image_waits_for_company_until_the_batch_is_full(captioners, monkeypatch):
    """max_wait is how long the first image may wait for others: with a minute of it and max_batch 2, an image
    sent only once the first is seen waiting in the queue still joins it."""
    counting = slow_counting(captioners["base"], monkeypatch)
    settings = ServeSettings(max_batch=2, max_wait_ms=60_000)
    with TestClient(create_app(captioners, settings)) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post_image, client, num_beams=1, max_length=5)
        wait_until_queued(client, 1)
        second = post_image(client, num_beams=1, max_length=5)
        assert (first.result().status_code, second.status_code) == (200, 200)
    assert counting.batches == [2]


def test_different_decoding_settings_are_not_batched_together(captioners, monkeypatch):
    counting = slow_counting(captioners["base"], monkeypatch)
    settings = ServeSettings(max_batch=8, max_wait_ms=0)
    with TestClient(create_app(captioners, settings)) as client, ThreadPoolExecutor(5) as pool:
        posts = [{"num_beams": b, "max_length": 5} for b in (1, 2, 1, 2)]
        answers = queued_together(client, counting, pool, posts)
        assert [a.result().status_code for a in answers] == [200] * 4
    assert counting.batches[1:] == [2, 2]  # all four waited together, and ran as two batches of one setting each


def test_seeded_sampling_is_batched_only_within_its_request(captioners, monkeypatch):
    """Same seed, same captions, whatever runs concurrently: seeded requests never share a model call."""
    params = {"do_sample": "true", "seed": "11", "n_best": "2", "max_length": "6"}
    with TestClient(create_app(captioners, ServeSettings(max_wait_ms=0))) as client:
        alone = post_image(client, **params).json()["results"][0]["captions"]
    counting = slow_counting(captioners["base"], monkeypatch)
    settings = ServeSettings(max_batch=8, max_wait_ms=0)
    with TestClient(create_app(captioners, settings)) as client, ThreadPoolExecutor(4) as pool:
        responses = [a.result() for a in queued_together(client, counting, pool, [params] * 3)]
    assert [r.json()["results"][0]["captions"] for r in responses] == [alone] * 3
    assert counting.batches[1:] == [1, 1, 1]  # all three waited together, and still ran one by one


def test_seeded_sampling_does_not_wait_for_company_it_cannot_get(captioners):
    """A seeded request batches alone, so max_wait cannot bring it company: with ten minutes of max_wait it still
    answers within the request timeout (before, it waited out max_wait and answered 504)."""
    settings = ServeSettings(max_batch=8, max_wait_ms=600_000, request_timeout_s=20)
    with TestClient(create_app(captioners, settings)) as client:
        response = post_image(client, do_sample="true", seed=3, max_length=5)
    assert response.status_code == 200, response.text


def test_full_queue_answers_503_with_retry_after(captioners, monkeypatch):
    counting = slow_counting(captioners["base"], monkeypatch)
    settings = ServeSettings(max_batch=1, max_wait_ms=0, max_queue=1, max_images=1, retry_after_s=3)
    counting.release.clear()  # the model is held until the refusals are seen: no timing decides what is queued
    with TestClient(create_app(captioners, settings)) as client, ThreadPoolExecutor(2) as pool:
        try:
            running = pool.submit(post_image, client, num_beams=1)
            assert counting.started.wait(60)  # the first request is in the model now
            queued = pool.submit(post_image, client, num_beams=1)
            wait_until_queued(client, 1)
            refused = post_image(client, num_beams=1)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "3"
            # It says how full the queue is against what the request needs (not "1 queued, room for 1").
            detail = "model 'base': queue full (1 of 1 image places taken, 1 needed); retry later"
            assert refused.json()["detail"] == detail
        finally:
            counting.release.set()
        assert post_image(client, model="tuned", num_beams=1).status_code == 200  # other models still serve
        assert running.result().status_code == 200 and queued.result().status_code == 200


def test_slow_request_times_out_with_504_and_server_recovers(captioners, monkeypatch):
    counting = slow_counting(captioners["base"], monkeypatch)
    counting.release.clear()  # the model is held past the time limit, however slow the machine
    with TestClient(create_app(captioners, ServeSettings(request_timeout_s=0.3, max_wait_ms=0))) as client:
        try:
            response = post_image(client, num_beams=1)
        finally:
            counting.release.set()
        assert response.status_code == 504
        assert response.json()["detail"] == "model 'base': no answer within 0.3 s"
        assert counting.finished.wait(timeout=60)  # the abandoned batch finishes in the background
        assert post_image(client, num_beams=1).status_code == 200
        assert client.app.state.batchers["base"].queued == 0


def test_decoding_the_images_counts_toward_the_request_timeout(captioners, monkeypatch):
    """The time limit bounds the whole request once its body is in (so that a graceful stop, which waits
    --read-timeout-s + --timeout-s, sees it end): images that took it all to decode answer 504 with no model work."""
    from captionkit.serve import app as app_module

    counting = slow_counting(captioners["base"], monkeypatch)
    late = [0.0]  # seconds the app's clock is ahead of the real one
    monkeypatch.setattr(app_module, "monotonic", lambda: time.monotonic() + late[0])
    real_load = app_module.load_uploads

    def slow_load(uploads, settings, preprocessing):
        loaded = real_load(uploads, settings, preprocessing)
        late[0] = settings.request_timeout_s  # as if decoding had taken the whole time limit
        return loaded

    monkeypatch.setattr(app_module, "load_uploads", slow_load)
    with TestClient(create_app(captioners, ServeSettings(request_timeout_s=5, max_wait_ms=0))) as client:
        response = post_image(client, num_beams=1)
        assert response.status_code == 504
        assert response.json()["detail"] == "model 'base': no answer within 5 s"
        assert counting.batches == [] and client.app.state.batchers["base"].queued == 0
        late[0] = 0.0  # the next request decodes in no time: the server runs it as before
        monkeypatch.setattr(app_module, "load_uploads", real_load)
        assert post_image(client, num_beams=1).status_code == 200 and counting.batches == [1]


def fail_once(monkeypatch, owner, name: str, failing) -> None:
    """Replace ``owner.name`` by ``failing(original, *args)`` for its first call only."""
    original = getattr(owner, name)
    calls = []

    def replacement(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return failing(original, *args, **kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, replacement)


def out_of_memory(original, *args, **kwargs):
    raise MemoryError("CPU out of memory while decoding")


def one_caption_short(original, *args, **kwargs):
    return original(*args, **kwargs)[:-1]


@pytest.mark.parametrize(
    ("owner", "name", "failing", "detail"),
    [
        ("tokenizer", "decode", out_of_memory, "internal error (MemoryError: CPU out of memory while decoding)"),
        (
            "captioner",
            "caption_pil",
            one_caption_short,
            "internal error (RuntimeError: the model returned captions for 1 of 2 images)",
        ),
    ],
)
def test_a_failing_batch_fails_its_requests_with_500_and_the_next_one_runs(
    captioners, monkeypatch, caplog, owner, name, failing, detail
):
    captioner = captioners["base"]
    fail_once(monkeypatch, captioner.tokenizer if owner == "tokenizer" else captioner, name, failing)
    two_images = [("image", (f"img{i}.png", image_bytes("PNG"), "image/png")) for i in range(2)]
    with TestClient(create_app(captioners, ServeSettings(max_wait_ms=0))) as client:
        failed = client.post("/v1/captions", files=two_images, data={"num_beams": "1", "max_length": "5"})
        assert failed.status_code == 500
        assert failed.json() == {"detail": f"model 'base': {detail}"}
        after = post_image(client, num_beams=1, max_length=5)
        assert after.status_code == 200, after.text
        assert client.get("/readyz").status_code == 200
        assert 'captionkit_http_errors_total{path="/v1/captions",status="500"} 1.0' in client.get("/metrics").text
    assert "error in a batch of 2 images" in caplog.text  # the traceback goes to the server log


def test_a_failing_metrics_callback_still_delivers_the_captions(captioners, monkeypatch):
    fail_once(monkeypatch, Metrics, "record_batch", lambda original, *args: 1 / 0)
    with TestClient(create_app(captioners, ServeSettings(max_wait_ms=0))) as client:
        assert [post_image(client, num_beams=1, max_length=5).status_code for _ in range(2)] == [200, 200]


def test_a_dead_batching_worker_is_not_ready_and_refuses_at_once(captioners, monkeypatch, caplog):
    """A bug that ends the worker itself: waiting and later requests get 503 now, not a 504 after the timeout."""

    async def broken() -> None:
        raise RuntimeError("bug in batching")

    # An hour's request timeout: a 503 in this test can only come from the dead worker failing the request, since
    # the timeout path would answer 504, and only after an hour.
    with TestClient(create_app(captioners, ServeSettings(max_wait_ms=0, request_timeout_s=3600))) as client:
        monkeypatch.setattr(client.app.state.batchers["base"], "_run_one_batch", broken)
        stopped = "the captioning worker stopped (RuntimeError: bug in batching)"
        for _ in range(2):  # the request queued when the worker died, then one sent after
            response = post_image(client, num_beams=1)
            assert response.status_code == 503
            assert response.json() == {"detail": f"model 'base': not available: {stopped}; the server needs a restart"}
            assert "retry-after" not in response.headers
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "not ready", "detail": f"model 'base': {stopped}"}
        assert post_image(client, model="tuned", num_beams=1).status_code == 200  # the other model still serves
        health = client.get("/healthz")  # liveness fails too: only a restart brings the worker back
        assert health.status_code == 503 and "model 'base'" in health.json()["detail"]
    assert f"captionkit serve: {stopped}; restart the server" in caplog.text


def test_settings_refuse_more_images_per_request_than_the_queue_holds():
    with pytest.raises(ConfigError) as refused:
        ServeSettings(max_queue=8)  # max_images defaults to 16
    assert str(refused.value) == (
        "serve.max_images: must be <= serve.max_queue (8), got 16: "
        "a request with more images than the queue holds could never run"
    )
    assert ServeSettings(max_queue=4, max_images=4).max_images == 4


def test_attention_maps_come_with_each_caption(client, captioners):
    response = post_image(client, model="tuned", attention="true", num_beams=3, n_best=2, max_length=6)
    assert response.status_code == 200, response.text
    expected = captioners["tuned"].caption_pil(
        [load_image(image_bytes())], DecodingConfig(num_beams=3, num_return_sequences=2, max_new_tokens=6), 0, True
    )[0]
    captions = response.json()["results"][0]["captions"]
    assert [c["caption"] for c in captions] == [c.caption for c in expected]
    for served, caption in zip(captions, expected, strict=True):
        assert [entry["token"] for entry in served["attention"]] == caption.tokens
        grids = [entry["grid"] for entry in served["attention"]]
        assert len(grids) == len(caption.token_ids) and all(len(g) == 4 and len(g[0]) == 4 for g in grids)
        assert grids == caption.attention.round(3).tolist()  # 3 decimals of the API's arrays
        assert all(sum(map(sum, grid)) == pytest.approx(1.0, abs=0.01) for grid in grids)
    plain = post_image(client, model="tuned", num_beams=3, n_best=2, max_length=6).json()["results"][0]
    assert all("attention" not in c for c in plain["captions"])
    assert [c["caption"] for c in plain["captions"]] == [c["caption"] for c in captions]


def test_attention_box_is_the_crop_the_model_saw(client, captioners, monkeypatch):
    # The tiny model resizes straight to 32x32: its grids cover the whole image. Given a centre crop (the shorter
    # edge to 32 first, as a ResNet's 256 -> 224), a 48x40 image becomes 38x32 and loses 3 columns each side, so
    # the grids cover x in [3/38, 35/38] and all of y.
    whole = post_image(client, model="tuned", attention="true", max_length=3).json()["results"][0]
    assert whole["attention_box"] == [0, 0, 1, 1]
    assert "attention_box" not in post_image(client, model="tuned", max_length=3).json()["results"][0]
    tuned = captioners["tuned"]
    monkeypatch.setattr(tuned, "preprocessing", replace(tuned.preprocessing, crop_from=32))
    cropped = post_image(client, model="tuned", attention="true", max_length=3).json()["results"][0]
    assert cropped["attention_box"] == pytest.approx([3 / 38, 0, 35 / 38, 1], abs=1e-6)
    # Upright first: the same image turned by its EXIF orientation (40x48 as shown) is cropped top and bottom.
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    turned = post_image(client, image_bytes(exif=exif.tobytes()), model="tuned", attention="true", max_length=3)
    assert turned.json()["results"][0]["attention_box"] == pytest.approx([0, 3 / 38, 1, 35 / 38], abs=1e-6)


def test_attention_is_refused_for_a_model_without_it(captioners, monkeypatch):
    monkeypatch.setattr(captioners["tuned"].model, "has_attention", False, raising=False)
    with TestClient(create_app(captioners, ServeSettings(max_wait_ms=0))) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert not listed["tuned"]["attention"] and listed["base"]["attention"]
        refused = post_image(client, model="tuned", attention="true")
        assert refused.status_code == 422
        assert refused.json()["detail"] == "attention: model 'tuned' does not report attention maps"
        assert post_image(client, model="base", attention="true", num_beams=1).status_code == 200


def test_attention_and_plain_requests_batch_apart(captioners, monkeypatch):
    """Concurrent requests with and without attention=true never share a model call: all four wait together behind
    a held first call, then run as one batch of each kind, and each gets what it asked for."""
    counting = slow_counting(captioners["base"], monkeypatch)
    calls: list[tuple[int, bool]] = []  # (images, attention) of each model call
    inner = counting.inner

    def run(images, config, offset, attention, starts):
        calls.append((len(images), attention))
        return inner(images, config, offset, attention, starts)

    counting.inner = run
    flags = ["true", "false", "true", "false"]
    settings = ServeSettings(max_batch=8, max_wait_ms=0)
    with TestClient(create_app(captioners, settings)) as client, ThreadPoolExecutor(5) as pool:
        posts = [{"attention": flag, "num_beams": 1, "max_length": 5} for flag in flags]
        answers = [a.result() for a in queued_together(client, counting, pool, posts)]
    assert [r.status_code for r in answers] == [200] * 4
    assert [("attention" in r.json()["results"][0]["captions"][0]) for r in answers] == [True, False, True, False]
    assert sorted(calls[1:]) == [(2, False), (2, True)]  # the first call is queued_together's own


def styled_captioner(directory) -> tuple[Captioner, dict[str, int]]:
    """The tiny model of ``directory`` given style tokens (their rows random): a model that writes styles."""
    styled = load_tiny(directory)
    ids = add_style_tokens(styled.tokenizer)
    styled.model.resize_vocabulary(styled.tokenizer.vocab_size)
    return styled, ids


def test_requests_of_different_styles_share_a_batch(model_dirs, monkeypatch):
    """Held behind a first call, requests in three styles (with and without attention maps) run as one model call
    per attention kind, and each gets the captions (and maps) its style gets alone."""
    styled, ids = styled_captioner(model_dirs[1])
    counting = slow_counting(styled, monkeypatch)
    styles = ["positive", "neutral", "negative", "positive"]
    settings = ServeSettings(max_batch=8, max_wait_ms=0)
    with TestClient(create_app({"base": styled}, settings)) as client, ThreadPoolExecutor(9) as pool:
        posts = [
            {"style": style, "num_beams": 2, "n_best": 2, "max_length": 6, "attention": attention}
            for attention in ("false", "true")
            for style in styles
        ]
        answers = [a.result() for a in queued_together(client, counting, pool, posts)]
    assert counting.batches == [1, 4, 4]  # the first call is queued_together's own
    image = [load_image(image_bytes())]
    for params, answer in zip(posts, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["style"] == params["style"]
        start = ids.get(params["style"])
        alone = counting.inner(
            image, DecodingConfig(num_beams=2, num_return_sequences=2, max_new_tokens=6, start_token_id=start), 0, True
        )[0]
        served = body["results"][0]["captions"]
        assert [c["caption"] for c in served] == [c.caption for c in alone]
        if params["attention"] == "true":
            assert [[e["grid"] for e in c["attention"]] for c in served] == [
                c.attention.round(3).tolist() for c in alone
            ]
    # The styles write different captions, so a batch that decoded every image from one start would fail above.
    assert len({answer.json()["results"][0]["caption"] for answer in answers[:3]}) > 1


def test_styles_are_served_by_models_trained_with_them(model_dirs):
    styled, ids = styled_captioner(model_dirs[1])
    served = {"base": load_tiny(model_dirs[0]), "styled": styled}
    with TestClient(create_app(served, ServeSettings(max_wait_ms=0))) as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed["styled"]["styles"] == ["neutral", "positive", "negative"]
        assert listed["base"]["styles"] == ["neutral"]
        for style in ("positive", "negative"):
            response = post_image(client, model="styled", style=style, num_beams=1)
            assert response.status_code == 200 and response.json()["style"] == style
            # The caption is the one the model writes when its decoder starts with the style's token.
            expected = styled.caption_pil(
                [load_image(image_bytes())], DecodingConfig(num_beams=1, start_token_id=ids[style])
            )[0][0].caption
            assert response.json()["results"][0]["caption"] == expected
        plain = post_image(client, model="base", style="positive").json()["detail"]
        assert plain == "style: model 'base' was trained without styles: it cannot write positive captions"
        unknown = post_image(client, model="styled", style="sarcastic").json()["detail"]
        assert unknown == "style: unknown style 'sarcastic' (known: neutral, positive, negative)"
        assert post_image(client, model="styled", style="neutral", num_beams=1).status_code == 200


def test_readyz_follows_the_lifespan(captioners):
    app = create_app(captioners, ServeSettings(max_wait_ms=0))
    client = TestClient(app)  # not entered: the lifespan has not run
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    for _ in range(2):  # the same app starts again after a shutdown
        with TestClient(app) as running:
            assert running.get("/readyz").status_code == 200
            assert post_image(running, num_beams=1).status_code == 200
        assert client.get("/readyz").json() == {"status": "not ready", "detail": "starting or shutting down"}


def test_loopback_load_smoke(captioners):
    settings = ServeSettings(max_batch=4, max_wait_ms=5)
    with running_server(create_app(captioners, settings)) as url:
        report = run_load(url, image_bytes(), {"num_beams": "1", "max_length": "5"}, requests=12, concurrency=4)
    assert report.statuses == {200: 12}
    assert report.error_rate == 0.0
    assert report.p50_ms <= report.p95_ms  # the report's own consistency; how fast is the benchmark's business
    assert report.throughput == pytest.approx(12 / report.seconds)
    assert report.line().startswith("12 requests at concurrency 4: p50 ")


def test_real_server_answers_413_to_declared_and_streamed_oversized_bodies(captioners):
    """Through uvicorn, not only the test client: the body is refused while it streams, and serving goes on."""
    megabyte = b"\0" * (1024 * 1024)
    with running_server(create_app(captioners, ServeSettings(max_upload_bytes=1024 * 1024))) as url:
        declared = httpx.post(f"{url}/v1/captions", files={"image": ("big.jpg", megabyte * 3)}, timeout=30)
        streamed = httpx.post(
            f"{url}/v1/captions",
            content=(megabyte for _ in range(3)),  # chunked: no Content-Length to refuse it by
            headers={"content-type": "multipart/form-data; boundary=x"},
            timeout=30,
        )
        after = httpx.post(f"{url}/v1/captions", files={"image": ("ok.jpg", image_bytes())}, timeout=30)
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json() == {"detail": "request body: over the 1 MiB upload limit"}
    assert after.status_code == 200


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([], 0.5) == 0.0


def test_serve_without_the_extra_says_how_to_install(monkeypatch, capsys):
    import captionkit.cli.serve as serve_cli

    monkeypatch.setattr(serve_cli.importlib.util, "find_spec", lambda name: None if name == "fastapi" else object())
    code, _, err = run_cli(["serve", "--model", "anything"], capsys)
    assert code == 1
    assert err.strip() == "captionkit serve needs the serve extra: pip install 'captionkit[serve]'"


def test_serve_refuses_two_models_with_one_name(model_dirs, capsys):
    code, _, err = run_cli(["serve", "--model", str(model_dirs[0]), "--model", f"base={model_dirs[1]}"], capsys)
    assert code == 1
    assert "two models named 'base'" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-batch", "0", "--max-batch: must be a positive integer, got 0"),
        ("--read-timeout-s", "0", "--read-timeout-s: must be a finite number > 0, got 0"),
        ("--max-connections", "0", "--max-connections: must be a positive integer, got 0"),
    ],
)
def test_serve_refuses_bad_limits_before_loading_models(tmp_path, capsys, option, value, message):
    code, _, err = run_cli(["serve", "--model", str(tmp_path / "never-loaded"), option, value], capsys)
    assert code == 1
    assert err.strip() == f"captionkit: error: {message}"


def test_serve_refuses_more_images_per_request_than_the_queue_holds(tmp_path, capsys):
    never = str(tmp_path / "never-loaded")
    code, _, err = run_cli(["serve", "--model", never, "--max-queue", "8", "--max-images", "9"], capsys)
    assert code == 1
    assert err.strip() == (
        "captionkit: error: --max-images: must be <= --max-queue (8), got 9: "
        "a request with more images than the queue holds could never run"
    )
    code, _, err = run_cli(["serve", "--model", never, "--max-queue", "8", "--max-images", "8"], capsys)
    assert code == 1 and "no such directory" in err  # the limits passed; the model is what is missing


def test_serve_refuses_a_missing_model(tmp_path, capsys):
    code, _, err = run_cli(["serve", "--model", str(tmp_path / "nope")], capsys)
    assert code == 1
    assert "no such directory" in err


def test_sigterm_finishes_the_in_flight_request_and_exits_0(model_dirs, tmp_path):
    """The client holds its request in flight across the SIGTERM, so no timing decides whether it was: the head
    goes first (with Expect: 100-continue, the server's 100 Continue says the app is reading the body), the body only
    once the server logs that it is shutting down. The images then wait max-wait-ms in the batcher, which must
    still run."""
    port = free_port()
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "captionkit.cli", "serve", "--model", f"base={model_dirs[0]}"]
    # Read and request timeouts far beyond the test: the body may come as late as the scheduling makes it.
    command += ["--port", str(port), "--max-wait-ms", "500", "--device", "cpu"]
    command += ["--read-timeout-s", "300", "--timeout-s", "300"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    body = json.dumps({"images": [base64.b64encode(image_bytes()).decode()], "num_beams": 1}).encode()
    head = b"POST /v1/captions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nexpect: 100-continue\r\n"
    head += f"content-length: {len(body)}\r\n\r\n".encode()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(head)
            interim, _, nothing = read_response(sock)
            assert (interim, nothing) == (100, b"")  # the request is in flight: the app waits for its body
            server.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 60
            while "Shutting down" not in Path(log.name).read_text():  # uvicorn has taken the signal
                assert server.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
                time.sleep(0.05)
            sock.sendall(body)
            status, _, answer = read_response(sock)
        assert status == 200, answer
        assert json.loads(answer)["results"][0]["image"] == "images[0]"
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    output = Path(log.name).read_text()
    assert f"captionkit serve: web page at {url}/, API at /v1/captions, docs at /docs" in output
    assert "Finished server process" in output
    assert "captionkit serve: stopped by SIGTERM after finishing in-flight requests" in output
