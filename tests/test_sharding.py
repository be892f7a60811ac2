"""Sharding: a stable, disjoint, complete split of the inputs; shard and torchrun runs merge into one run's result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _captioning import assert_same_records, make_photo_folder, read_jsonl, spawn_cli
from _helpers import run_cli, save_tiny_model
from captionkit.errors import InputError
from captionkit.jobs.inputs import collect_inputs
from captionkit.jobs.sharding import (
    DistributedEnv,
    Shard,
    choose_device,
    choose_shard,
    distributed_env,
    parse_shard,
    part_of,
    shard_of,
)

KEYS = [f"album-{i // 50}/IMG_{i:05d}.jpg" for i in range(2000)]


def test_shard_of_is_pinned_and_independent_of_the_process():
    # Pinned values: a shard must hold the same images on every run, machine and Python version.
    assert [shard_of(key, 7) for key in ("a.jpg", "sub/b.jpg", "ünïcode/ç.png", "")] == [6, 0, 0, 0]
    code = "from captionkit.jobs.sharding import shard_of; print([shard_of(k, 7) for k in ('a.jpg', 'sub/b.jpg')])"
    for salt in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[6, 0]"


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_are_disjoint_complete_and_balanced(count):
    owners = [[index for index in range(count) if Shard(index, count).owns(key)] for key in KEYS]
    assert all(len(found) == 1 for found in owners)  # each key in exactly one shard
    sizes = [sum(found == [index] for found in owners) for index in range(count)]
    assert sum(sizes) == len(KEYS)
    assert max(sizes) < 1.25 * len(KEYS) / count and min(sizes) > 0.75 * len(KEYS) / count


def test_keys_do_not_depend_on_where_the_folder_is_mounted(tmp_path):
    for root in ("mount-a/photos", "elsewhere/photos"):
        for name in ("x.jpg", "sub/y.png", "sub/deeper/z.gif"):
            (tmp_path / root / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / root / name).write_bytes(b"x")
    first, second = (collect_inputs([tmp_path / root]) for root in ("mount-a/photos", "elsewhere/photos"))
    assert [item.key for item in first] == [item.key for item in second] == ["sub/deeper/z.gif", "sub/y.png", "x.jpg"]


def test_parse_shard_and_part_names():
    assert parse_shard("1/4") == Shard(1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2", "1/0", "1/2/3"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)
    assert Shard(2, 8).part_path(Path("out/captions.jsonl")) == Path("out/captions.part-2-of-8.jsonl")
    assert Shard(0, 2).part_path(Path("captions")) == Path("captions.part-0-of-2")
    assert part_of(Path("out/captions.part-2-of-8.jsonl")) == Shard(2, 8)
    assert part_of(Path("captions.part-0-of-2")) == Shard(0, 2)
    assert part_of(Path("captions.jsonl")) is None
    assert part_of(Path("x.part-3-of-2.jsonl")) is None


def test_torchrun_environment_chooses_shard_and_device():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    dist = distributed_env(env)
    assert dist == DistributedEnv(rank=5, world_size=8, local_rank=1, local_world_size=4)
    assert distributed_env({}) is None
    assert choose_shard(None, dist) == Shard(5, 8)
    assert choose_shard("1/2", None) == Shard(1, 2)
    assert choose_shard(None, DistributedEnv(0, 1, 0, 1)) is None  # one process: no parts
    assert choose_shard(None, None) is None
    # --shard under torchrun splits that shard among the ranks: node 1 of 3 with 8 ranks holds parts 8..15 of 24.
    assert choose_shard("1/3", dist) == Shard(13, 24)
    owners = [choose_shard(f"{node}/3", DistributedEnv(rank, 2, rank, 2)) for node in range(3) for rank in range(2)]
    assert owners == [Shard(index, 6) for index in range(6)]
    with pytest.raises(InputError, match="RANK"):
        distributed_env({"RANK": "3", "WORLD_SIZE": "2"})
    assert choose_device("cpu", dist) == "cpu"
    assert choose_device(None, None) is None
    assert choose_device("cuda:0", dist) == "cuda:0"  # an explicit GPU is kept
    gpus = torch.cuda.device_count()
    assert choose_device(None, dist) == (f"cuda:{1 % gpus}" if gpus else None)  # LOCAL_RANK's GPU


def test_under_torchrun_an_export_stays_on_the_cpu(tmp_path, monkeypatch):
    """An int8 or ONNX export runs on the CPU: torchrun's processes do not each take a GPU for one (the export would
    refuse it), while a checkpoint's do."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    dist = DistributedEnv(rank=3, world_size=4, local_rank=1, local_world_size=2)
    for marker in ("quantization.json", "onnx_config.json"):
        export = tmp_path / marker.split(".")[0]
        export.mkdir()
        (export / marker).write_text("{}")
        assert choose_device(None, dist, export) is None
        assert choose_device("cuda", dist, str(export)) == "cuda"  # asked for: the export refuses it in one line
    assert choose_device(None, dist, tmp_path) == "cuda:1"
    assert choose_device(None, dist, "nlpconnect/vit-gpt2-image-captioning") == "cuda:1"


# --- whole runs ----------------------------------------------------------------------------------------------

COMMON = ["--beams", "2", "--max-length", "5", "--batch-size", "3"]
SAMPLED = ["--sample", "--seed", "11", "--top-k", "5", "--max-length", "6", "--batch-size", "3"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    return save_tiny_model(root / "tiny"), make_photo_folder(root / "photos", 14)


def test_two_shard_processes_merge_to_the_one_process_result(job, tmp_path, capsys):
    model, photos = job
    args = ["caption", photos, "--model", model, *SAMPLED]
    code, _, _ = run_cli([*args, "--output", tmp_path / "one.jsonl"], capsys)
    assert code == 2
    reference = read_jsonl(tmp_path / "one.jsonl")
    assert len(reference) == 18 and sum("error" in r for r in reference) == 4
    shards = [spawn_cli([*args, "--output", tmp_path / "two.jsonl", "--shard", f"{k}/2"]) for k in (0, 1)]
    results = [shard.communicate(timeout=300) for shard in shards]
    assert [shard.returncode for shard in shards] == [2, 2], results
    parts = sorted(tmp_path.glob("two.part-*-of-2.jsonl"))
    assert [p.name for p in parts] == ["two.part-0-of-2.jsonl", "two.part-1-of-2.jsonl"]
    sizes = [len(read_jsonl(part)) for part in parts]
    assert sum(sizes) == 18 and min(sizes) > 0
    merged = tmp_path / "merged.jsonl"
    code, _, err = run_cli(["merge", *parts, "--output", merged, "--inputs", photos], capsys)
    assert code == 2  # the bad files' error records
    assert "18 records (4 errors)" in err
    assert [r["image"] for r in read_jsonl(merged)] == [r["image"] for r in reference]  # input order
    assert_same_records(read_jsonl(merged), reference)  # same sampled captions, same errors


def test_shard_needs_output(job, capsys, monkeypatch):
    model, photos = job
    code, _, err = run_cli(["caption", photos, "--model", model, "--shard", "0/2"], capsys)
    assert code == 1 and "needs --output" in err
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(["caption", photos, "--model", model], capsys)
    assert code == 1 and "needs --output" in err


def test_a_torchrun_process_with_bad_images_exits_0_even_alone(job, tmp_path, capsys, monkeypatch):
    """torchrun reports a nonzero exit as a crashed worker, even with --nproc-per-node 1 (as train): the bad images
    are the output's error records and the summary line's count; merge (or reading the output) reports them."""
    model, photos = job
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    code, _, err = run_cli(["caption", photos, "--model", model, *COMMON, "--output", tmp_path / "out.jsonl"], capsys)
    assert code == 0, err
    written = [read_jsonl(path) for path in tmp_path.glob("out*.jsonl")]
    assert len(written) == 1 and len(written[0]) == 18 and sum("error" in r for r in written[0]) == 4
    assert "4 errors" in err and "captionkit: exit 0 although images failed: torchrun takes a nonzero" in err, err


@pytest.mark.slow  # ~30 s on the shared 2-core machine: torchrun's agent and two ranks each import torch
def test_torchrun_two_ranks_on_cpu_merge_to_the_one_process_result(job, tmp_path, capsys):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun comes with torch"
    model, photos = job
    args = ["caption", photos, "--model", model, *COMMON]
    code, _, _ = run_cli([*args, "--output", tmp_path / "one.jsonl"], capsys)
    assert code == 2
    launcher = [torchrun, "--nproc-per-node", "2", "--master-port", "0"]
    run = spawn_cli([*args, "--output", tmp_path / "ranks.jsonl", "--workers", "1"], launcher=launcher)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err  # ranks with bad images exit 0 so that torchrun does not stop the others
    parts = sorted(tmp_path.glob("ranks.part-*-of-2.jsonl"))
    assert len(parts) == 2
    code, _, _ = run_cli(["merge", *parts, "--output", tmp_path / "merged.jsonl", "--inputs", photos], capsys)
    assert code == 2
    assert_same_records(read_jsonl(tmp_path / "merged.jsonl"), read_jsonl(tmp_path / "one.jsonl"))
