"""`captionkit serve --max-upload-mb / --timeout-s` reach the served app's settings, and nonsense values are refused
in one line before any model loads (uvicorn.run replaced: the app it would serve is inspected, nothing listens)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from _helpers import run_cli
from _serve import image_bytes, save_tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0)


@pytest.fixture
def served(monkeypatch) -> list[tuple[Any, dict[str, Any]]]:
    """What `captionkit serve` hands to uvicorn.run (app, options), which returns at once instead of serving."""
    runs: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: runs.append((app, options)))
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
    assert options["timeout_graceful_shutdown"] == 7  # int(2.5) + 5: in-flight requests get their whole timeout
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
        ("--timeout-s", "0", "serve.request_timeout_s: must be > 0, got 0.0"),
        ("--timeout-s", "inf", "serve.request_timeout_s: must be a finite number >= 0, got inf"),
    ],
)
def test_bad_upload_or_timeout_values_are_one_line_errors(tmp_path, served, capsys, option, value, message):
    code, _out, err = run_cli(["serve", "--model", str(tmp_path / "never-loaded"), option, value], capsys)
    assert code == 1
    assert err.strip() == f"captionkit: error: {message}"  # one line: no traceback, no model loaded first
    assert served == []
