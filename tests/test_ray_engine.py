"""`caption --engine ray` on a local Ray: the same records as the default engine, in the same order."""

from __future__ import annotations

import sys

import pytest

from _captioning import read_jsonl
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
    args = ["caption", tmp_path / "shards", "--model", model, "--beams", "2", "--max-length", "5", "--batch-size", "2"]
    code, _, _ = run_cli([*args, "--output", tmp_path / "local.jsonl"], capsys)
    assert code == 2
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'captionkit[ray]')")
    try:
        code, _, err = run_cli([*args, "--output", tmp_path / "ray.jsonl", "--engine", "ray", "--workers", "2"], capsys)
    finally:
        ray.shutdown()
    assert code == 2, err
    assert read_jsonl(tmp_path / "ray.jsonl") == read_jsonl(tmp_path / "local.jsonl")
