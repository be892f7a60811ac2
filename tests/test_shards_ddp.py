"""Two processes under torchrun (gloo, CPU) training from WebDataset shards: each rank draws its own samples, and a
run stopped midway resumes to the weights and the draws of an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _resume import assert_same_weights
from _shards import real_photos, write_webdataset

CHILD = Path(__file__).with_name("_consuming_child.py")


def settings(shards: Path) -> list[str]:
    return [
        "train.device=cpu",  # two CPU processes (gloo), also where a GPU is present: one GPU has no cuda:1
        f"data.train={shards}",
        f"data.val={shards / '00000.tar'}",
        "model.preset=tiny",
        "model.overrides={decoder_dropout: 0.1}",  # each process's RNG state must resume
        "tokenizer.vocab_size=300",
        "train.steps=4",
        "train.batch_size=2",
        "train.warmup_steps=1",
        "train.eval_every=4",
        "train.eval_images=2",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "train.threads=1",
        "train.tensorboard=false",
    ]


def torchrun(out: Path, shards: Path, signal_name: str, at_step: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29561"]
    command = [*launcher, str(CHILD), signal_name, str(at_step), str(out), *settings(shards)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def drawn(run: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run / f"consumed-rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.slow  # three torchrun launches
def test_two_ranks_draw_disjoint_shards_and_resume_exactly(tmp_path):
    shards = tmp_path / "shards"
    write_webdataset(real_photos(12), shards, per_shard=3)  # 4 shards: 2 whole shards per rank and epoch
    torchrun(tmp_path / "reference", shards, "KILL", 0)
    ranks = [drawn(tmp_path / "reference", rank) for rank in (0, 1)]
    assert [[entry["step"] for entry in entries] for entries in ranks] == [[0, 1, 2, 3]] * 2
    epoch = [[key for entry in entries[:3] for key in entry["ids"]] for entries in ranks]  # 3 steps x 2 samples
    assert not set(epoch[0]) & set(epoch[1])
    assert sorted(epoch[0] + epoch[1]) == sorted(photo.stem for photo in real_photos(12))

    torchrun(tmp_path / "run", shards, "TERM", 2)  # rank 0 gets SIGTERM after step 2: a checkpoint, then out
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "COMPLETE").is_file()
    assert not (tmp_path / "run" / "COMPLETE").exists()
    torchrun(tmp_path / "run", shards, "KILL", 0)
    assert_same_weights(tmp_path / "reference", tmp_path / "run")
    for rank in (0, 1):
        assert drawn(tmp_path / "run", rank) == drawn(tmp_path / "reference", rank)
