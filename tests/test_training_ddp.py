"""Data parallelism: two CPU processes under torchrun (gloo) end with the weights of one process that trains on
the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _ddp_child import break_records
from _resume import assert_same_training
from captionkit.config import load_train_config
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.training.loop import train
from captionkit.training.sampling import SampleStream
from captionkit.training.setup import build_setup, seed_everything

CHILD = Path(__file__).with_name("_train_child.py")


def settings(scenes: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        "train.device=cpu",  # two CPU processes (gloo), also where a GPU is present: one GPU has no cuda:1
        f"data.train={scenes}",
        f"data.val={scenes}",
        "data.first_caption_only=true",
        "data.cache_images=true",
        "model.preset=tiny",
        "tokenizer.vocab_size=300",
        "train.steps=4",
        f"train.batch_size={batch_size}",
        "train.warmup_steps=1",
        "train.eval_every=2",
        "train.eval_images=4",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "train.lr=3e-3",
        "train.threads=1",
        "train.tensorboard=false",
        *extra,
    ]


def torchrun(out: Path, scenes: Path, signal_name: str, at_step: int, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29534"]
    command = [*launcher, str(CHILD), signal_name, str(at_step), str(out), *settings(scenes, 4, *extra)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow  # three Python start-ups with torch and transformers
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    scenes = write_synthetic_dataset(tmp_path / "scenes", 32, 8, 4, seed=2, image_size=32)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    single = [sys.executable, str(CHILD), "KILL", "0", str(tmp_path / "one"), *settings(scenes, 8)]
    done = subprocess.run(single, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
    double = [*launcher, str(CHILD), "KILL", "0", str(tmp_path / "two"), *settings(scenes, 4)]
    done = subprocess.run(double, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ends = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert ends == [{"steps": 4, "interrupted": False, "group": False}] * 2  # each rank closed its process group
    one, two = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    assert_same_training(one, two)
    metrics_one = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    metrics_two = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics_one) == len(metrics_two) == 4  # rank 0 alone writes the log
    assert (tmp_path / "two" / "checkpoints" / "step-000004" / "COMPLETE").is_file()


@pytest.mark.slow  # three torchrun launches
def test_two_process_run_stopped_by_sigterm_resumes_exactly(tmp_path):
    scenes = write_synthetic_dataset(tmp_path / "scenes", 32, 8, 4, seed=2, image_size=32)
    dropout = "model.overrides={decoder_dropout: 0.1}"  # each process's RNG state must resume
    done = torchrun(tmp_path / "reference", scenes, "KILL", 0, dropout)
    assert done.returncode == 0, done.stderr[-3000:]
    stopped = torchrun(tmp_path / "run", scenes, "TERM", 3, dropout)  # rank 0 gets SIGTERM after step 3
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "COMPLETE").is_file()
    assert not (tmp_path / "run" / "COMPLETE").exists()
    resumed = torchrun(tmp_path / "run", scenes, "KILL", 0, dropout)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = load_file(str(tmp_path / "reference" / "model.safetensors"))
    two = load_file(str(tmp_path / "run" / "model.safetensors"))
    for name in one:
        assert torch.equal(one[name], two[name]), name


@pytest.mark.slow  # two launches of Python with torch and transformers
def test_accelerate_launch_matches_one_process(tmp_path):
    # The same command under `accelerate launch` as under torchrun: the launcher's environment is all the trainer
    # reads. `--multi_gpu` is accelerate's torchrun path, which sets RANK/WORLD_SIZE (on this CPU machine the
    # trainer then uses gloo); accelerate's `--cpu` path starts ONE process unless MPI is set up.
    scenes = write_synthetic_dataset(tmp_path / "scenes", 32, 8, 4, seed=2, image_size=32)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    train = [sys.executable, "-m", "captionkit.cli", "train", "--no-progress"]
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("model:\n  preset: tiny\n")

    def run(command: list[str], out: str, batch_size: int) -> None:
        sets = [x for item in settings(scenes, batch_size) for x in ("--set", item)]
        command = [*command, str(recipe), "--output", str(tmp_path / out), *sets]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]

    run(train, "one", 8)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", "29542", "-m", "captionkit.cli", "train", "--no-progress"]
    run(launcher, "two", 4)
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert_same_training(one, two)


DDP_CHILD = Path(__file__).with_name("_ddp_child.py")


def ddp_settings(scenes: Path, *extra: str) -> list[str]:
    return [
        "train.device=cpu",  # two CPU processes (gloo), also where a GPU is present
        "model.family=cnn-lstm",  # batch norms and a ResNet a stage can freeze
        "model.preset=tiny",
        f"data.train={scenes}",
        "data.val_fraction=0",
        "data.first_caption_only=true",
        "data.cache_images=true",
        "tokenizer.vocab_size=100",
        "train.steps=4",
        "train.batch_size=4",
        "train.warmup_steps=0",
        "train.eval_images=0",
        "train.checkpoint_every=0",
        "train.lr=3e-3",
        "train.threads=1",
        "train.tensorboard=false",
        *extra,
    ]


def weights_of_two_processes(out: Path, missing: str, settings: list[str], port: int) -> list[dict[str, torch.Tensor]]:
    """Each process's parameters after a 2-process torchrun. A process left waiting in a collective (a hang) fails
    after the child's 60 s collective timeout, and the run with it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    command = [*launcher, str(DDP_CHILD), str(out), missing, *settings]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [load_file(str(out / f"rank{rank}.safetensors")) for rank in (0, 1)]


@pytest.mark.slow  # a torchrun launch of two processes with torch and transformers
def test_a_stage_that_unfreezes_the_encoder_keeps_processes_identical(tmp_path):
    # freeze_encoder: the ResNet is frozen when the run starts, so the first DDP leaves it out of its all-reduce;
    # the second stage trains it, and each process would train its own copy without a new DDP.
    scenes = write_synthetic_dataset(tmp_path / "scenes", 16, 8, 4, seed=2, image_size=32)
    stages = "train.stages=[{until_step: 2, train: [decoder]}, {train: [all]}]"
    settings = ddp_settings(scenes, "model.overrides={freeze_encoder: true}", stages)
    rank0, rank1 = weights_of_two_processes(tmp_path / "run", "-", settings, 29551)
    config = load_train_config(None, settings)
    seed_everything(config.train.seed)
    initial = dict(build_setup(config).model.named_parameters())
    assert rank0.keys() == rank1.keys() == initial.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        assert not torch.equal(rank0[name], initial[name].detach()), name  # every part trained


@pytest.mark.slow  # a torchrun launch of two processes with torch and transformers
def test_a_process_whose_micro_batch_is_all_unreadable_joins_the_others_step(tmp_path, single_thread):
    # Every image process 1 draws in the two steps is missing: it has nothing to train on, yet process 0's backward
    # waits in an all-reduce for it. It must join with a zero gradient, so the pair trains like one process on the
    # same global batches (of which half the images are missing).
    scenes = write_synthetic_dataset(tmp_path / "scenes", 16, 8, 4, seed=2, image_size=32)
    stream = SampleStream(16, 4, seed=0, rank=1, world_size=2).batches(0)
    missing = ",".join(str(index) for _ in range(2) for index in next(stream))  # one epoch: 2 steps x 8 samples
    # The attention family: its penalty, a mean over micro-batches, must not count process 1's placeholder.
    settings = ddp_settings(scenes, "model.family=cnn-lstm-attention", "train.steps=2", "train.seed=0")
    rank0, rank1 = weights_of_two_processes(tmp_path / "two", missing, settings, 29552)
    # Process 0 drew no missing image: the run's record lists those process 1 skipped.
    final_state = json.loads((tmp_path / "two" / "trainer_state.json").read_text())
    assert len(final_state["unreadable_images"]) == 8
    config = load_train_config(None, [*settings, "train.batch_size=8"])
    seed_everything(config.train.seed)
    setup = build_setup(config)
    break_records(setup.train_records, missing, tmp_path / "one")
    result = train(config, tmp_path / "one", setup=setup)
    assert result.steps == 2 and result.unreadable_images == 8
    one = {name: value.detach() for name, value in setup.model.named_parameters()}
    for name in one:
        assert torch.equal(rank0[name], rank1[name]), name
    assert_same_training(one, rank0)
