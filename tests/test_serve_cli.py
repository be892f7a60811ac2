"""`captionkit serve --max-upload-mb / --timeout-s` reach the served app's settings, and nonsense values are refused
in one line before any model loads (uvicorn replaced: the app it would serve is inspected, nothing listens)."""

from __future__ import annotations

import signal
import socket
from typing import Any

import pytest
from fastapi.testclient import TestClient

from _helpers import run_cli
from _serve import image_bytes, save_tiny_model
from captionkit.cli import serve as serve_cli

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0)


@pytest.fixture
def served(monkeypatch) -> list[tuple[Any, dict[str, Any]]]:
    """What `captionkit serve` hands to uvicorn (app, options), which returns at once instead of serving; the port is
    not taken either."""
    runs: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(serve_cli, "listening_socket", lambda host, port: socket.socket())
    monkeypatch.setattr(serve_cli, "run_server", lambda app, listener, **options: runs.append((app, options)) or True)
    # The command installs its own SIGINT/SIGTERM handlers for the run; pytest keeps its handlers.
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)
    return runs


def test_upload_and_timeout_flags_reach_the_app(model_dir, served, capsys):
    args = ["serve", "--model", f"tiny={model_dir}", "--device", "cpu", "--max-upload-mb", "1", "--timeout-s", "2.5"]
    code, _out, err = run_cli(args, capsys)
    assert code == 0, err
    ((app, options),) = served
    assert app.state.settings.max_upload_bytes == 1024 * 1024
    assert app.state.settings.request_timeout_s == 2.5
    # A request in flight at a stop may still be reading its body (--read-timeout-s, 30 by default) and then gets its
    # whole --timeout-s: 30 + 2.5, rounded up, + 5.
    assert options["timeout_graceful_shutdown"] == 38
    # The limit is the one the app enforces: a body just over 1 MiB is refused, naming it.
    with TestClient(app) as client:
        files = {"image": ("big.jpg", b"\xff\xd8\xff" + b"\0" * (1024 * 1024))}
        response = client.post("/v1/captions", files=files)
    assert response.status_code == 413
    assert response.json() == {"detail": "request body: over the 1 MiB upload limit"}


def test_a_fraction_of_a_mib_is_that_many_bytes(model_dir, served, capsys):
    code, _out, err = run_cli(
        ["serve", "--model", f"tiny={model_dir}", "--device", "cpu", "--max-upload-mb", "0.5"], capsys
    )
    assert code == 0, err
    ((app, _options),) = served
    assert app.state.settings.max_upload_bytes == 512 * 1024
    with TestClient(app) as client:  # a small image still fits
        files = {"image": ("ok.jpg", image_bytes())}
        assert client.post("/v1/captions", files=files, data={"num_beams": "1", "max_length": "4"}).status_code == 200


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-upload-mb", "0", "--max-upload-mb: must be a finite number > 0, got 0"),
        ("--max-upload-mb", "-1", "--max-upload-mb: must be a finite number > 0, got -1"),
        ("--max-upload-mb", "nan", "--max-upload-mb: must be a finite number > 0, got nan"),
        ("--max-upload-mb", "inf", "--max-upload-mb: must be a finite number > 0, got inf"),
        ("--timeout-s", "0", "--timeout-s: must be a finite number > 0, got 0"),
        ("--timeout-s", "-1", "--timeout-s: must be a finite number > 0, got -1"),
        ("--max-wait-ms", "-1", "--max-wait-ms: must be a finite number >= 0, got -1"),
        ("--timeout-s", "inf", "--timeout-s: must be a finite number > 0, got inf"),
    ],
)
def test_bad_upload_or_timeout_values_are_one_line_errors(tmp_path, served, capsys, option, value, message):
    code, _out, err = run_cli(["serve", "--model", str(tmp_path / "never-loaded"), option, value], capsys)
    assert code == 1
    assert err.strip() == f"captionkit: error: {message}"  # one line: no traceback, no model loaded first
    assert served == []


def test_a_port_in_use_fails_in_one_line_before_any_model_loads(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--model", str(tmp_path / "never-loaded"), "--port", str(port)]
        code, _out, err = run_cli(args, capsys)
    assert code == 1
    assert err.strip() == f"captionkit: error: --port: cannot listen on 127.0.0.1:{port} (Address already in use)"


def test_an_unknown_host_fails_in_one_line(tmp_path, capsys):
    args = ["serve", "--model", str(tmp_path / "never-loaded"), "--host", "no-such-host.invalid"]
    code, _out, err = run_cli(args, capsys)
    assert code == 1
    assert err.strip().startswith("captionkit: error: --host: no-such-host.invalid: unknown address (")


def test_decoding_bounds_reach_the_app_and_lower_its_defaults(model_dir, served, capsys):
    bounds = ["--max-beams", "2", "--max-new-tokens", "6", "--max-n-best", "2"]
    code, _out, err = run_cli(["serve", "--model", f"tiny={model_dir}", "--device", "cpu", *bounds], capsys)
    assert code == 0, err
    ((app, _options),) = served
    settings = app.state.settings
    assert (settings.max_beams, settings.max_new_tokens, settings.max_n_best) == (2, 6, 2)
    with TestClient(app) as client:
        assert client.get("/v1/models").json()["limits"]["max_beams"] == 2
        plain = client.post("/v1/captions", files={"image": ("a.jpg", image_bytes())})
        over = client.post("/v1/captions", files={"image": ("a.jpg", image_bytes())}, data={"num_beams": "3"})
    assert plain.status_code == 200, plain.text
    decoding = plain.json()["decoding"]
    assert (decoding["num_beams"], decoding["max_length"]) == (2, 6)  # not the table's 4 beams and 20 tokens
    assert over.status_code == 422
    assert over.json()["detail"] == "num_beams: must be at most 2 on this server, got 3"


def test_a_lower_bound_alone_lowers_the_defaults_that_may_not_exceed_it(model_dir, served, capsys):
    # --max-n-best defaults to 8 and --max-images to 16: given alone, --max-beams 2 or --max-queue 8 was refused
    # over a default the user never set.
    args = ["serve", "--model", f"tiny={model_dir}", "--device", "cpu", "--max-beams", "2", "--max-queue", "8"]
    code, _out, err = run_cli(args, capsys)
    assert code == 0, err
    ((app, _options),) = served
    settings = app.state.settings
    assert (settings.max_beams, settings.max_n_best, settings.max_queue, settings.max_images) == (2, 2, 8, 8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-beams", "0"], "--max-beams: must be a positive integer, got 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens: must be a positive integer, got 0"),
        (["--max-beams", "2", "--max-n-best", "3"], "--max-n-best: must be <= --max-beams (2), got 3"),
    ],
)
def test_bad_decoding_bounds_are_one_line_errors(tmp_path, served, capsys, args, message):
    code, _out, err = run_cli(["serve", "--model", str(tmp_path / "never-loaded"), *args], capsys)
    assert code == 1
    assert err.strip() == f"captionkit: error: {message}"
    assert served == []


@pytest.mark.parametrize("given", ["/captions", "/captions/"])
def test_root_path_reaches_the_app(model_dir, served, capsys, given):
    code, _out, err = run_cli(
        ["serve", "--model", f"tiny={model_dir}", "--device", "cpu", "--root-path", given], capsys
    )
    assert code == 0, err
    assert (
        "captionkit serve: web page at http://127.0.0.1:8000/captions/, API at /captions/v1/captions, docs at " in err
    )
    ((app, _options),) = served
    assert app.state.settings.root_path == "/captions"
    with TestClient(app) as client:
        assert '<base href="/captions/">' in client.get("/").text
        assert client.get("/captions/static/app.js").status_code == 200


def test_a_root_path_that_is_not_a_path_is_a_one_line_error(tmp_path, served, capsys):
    code, _out, err = run_cli(["serve", "--model", str(tmp_path / "never-loaded"), "--root-path", "captions"], capsys)
    assert code == 1
    message = "--root-path: must be a path such as /captions (no trailing slash, no ..), got 'captions'"
    assert err.strip() == f"captionkit: error: {message}"
    assert served == []
