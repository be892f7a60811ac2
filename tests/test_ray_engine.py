"""`caption --engine ray` on a local Ray: the same records as the default engine, in the same order, even when a
captioner actor is killed mid-run; without Ray, one line on how to install it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import captionkit
from _captioning import QUIET_ENV, read_jsonl
from _helpers import run_cli, save_tiny_model
from _shards import real_photos, write_webdataset


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    model = save_tiny_model(tmp_path / "tiny")
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra sees: import fails
    code, _, err = run_cli(["caption", real_photos(1)[0], "--model", model, "--engine", "ray"], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == "captionkit: error: --engine: needs Ray: pip install 'captionkit[ray]'"


@pytest.mark.slow  # starting Ray takes seconds and several processes: about a minute on 2 cores
def test_ray_run_equals_the_default_run_record_for_record(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "tiny")
    write_webdataset(real_photos(6), tmp_path / "shards", per_shard=3, image_bytes={2: b"not an image"})
    # One torch thread in both engines: float sums depend on the thread count, so equal settings give equal scores.
    args = ["caption", tmp_path / "shards", "--model", model, "--beams", "2", "--max-length", "5", "--batch-size", "2"]
    args += ["--threads", "1"]
    code, _, _ = run_cli([*args, "--output", tmp_path / "local.jsonl"], capsys)
    assert code == 2
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'captionkit[ray]')")
    try:
        code, _, err = run_cli([*args, "--output", tmp_path / "ray.jsonl", "--engine", "ray", "--workers", "2"], capsys)
    finally:
        ray.shutdown()
    assert code == 2, err
    assert read_jsonl(tmp_path / "ray.jsonl") == read_jsonl(tmp_path / "local.jsonl")
    progress = [line for line in err.splitlines() if line.startswith("ray: ")]
    assert re.fullmatch(r"ray: 6/6 images, \d+\.\d images/s, 1 error", progress[-1]), progress


def _actor_pids(root: int) -> list[int]:
    """The captioner actor processes (their titles name the class) among the descendants of process ``root``."""
    table = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 2) for line in table.splitlines()[1:]]
    children: dict[int, list[int]] = {}
    for pid, ppid, *_ in rows:
        children.setdefault(int(ppid), []).append(int(pid))
    descendants, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            descendants.add(child)
            todo.append(child)
    return [int(row[0]) for row in rows if int(row[0]) in descendants and "_CaptionActor" in row[-1]]


@pytest.mark.slow  # a minute: Ray in a subprocess, 60 images
def test_killing_a_captioner_actor_mid_run_still_gives_every_record_once(tmp_path, capsys):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'captionkit[ray]')")
    model = save_tiny_model(tmp_path / "tiny")
    write_webdataset(real_photos(60), tmp_path / "shards", per_shard=20)
    args = ["caption", tmp_path / "shards", "--model", model, "--beams", "4", "--max-length", "20", "--batch-size", "2"]
    args += ["--threads", "2"]  # not Ray's 1: the actors must take the setting, as the default engine does
    assert run_cli([*args, "--output", tmp_path / "local.jsonl"], capsys)[0] == 0
    out = tmp_path / "ray.jsonl"
    command = [sys.executable, "-m", "captionkit.cli", *map(str, args), "--output", str(out), "--engine", "ray"]
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(Path(captionkit.__file__).parents[1])}
    run = subprocess.Popen([*command, "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = None
    deadline = time.monotonic() + 240
    while run.poll() is None and time.monotonic() < deadline:
        written = out.read_text().count("\n") if out.exists() else 0
        actors = _actor_pids(run.pid) if killed is None and written >= 2 else []
        if actors:
            os.kill(actors[0], signal.SIGKILL)
            killed = actors[0]
        time.sleep(0.2)
    _, err = run.communicate(timeout=60)
    assert killed is not None, "the run ended before an actor could be killed"
    assert run.returncode == 0, err.decode()[-2000:]
    assert read_jsonl(out) == read_jsonl(tmp_path / "local.jsonl")


def test_ray_batches_are_the_default_engines_batches():
    from captionkit.jobs.ray_engine import _batches

    todo = [(position, Path(f"/photos/{position}.jpg")) for position in (3, 4, 5, 9, 10)]
    rows = [json.loads(row["items"]) for row in _batches(todo, 2)]
    assert rows == [
        [[3, "/photos/3.jpg"], [4, "/photos/4.jpg"]],
        [[5, "/photos/5.jpg"], [9, "/photos/9.jpg"]],
        [[10, "/photos/10.jpg"]],
    ]
