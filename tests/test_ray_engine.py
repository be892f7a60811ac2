"""`caption --engine ray` on a local Ray: the same records as the default engine, in the same order, even when a
captioner actor is killed mid-run; without Ray, one line on how to install it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import captionkit
from _captioning import QUIET_ENV, read_jsonl
from _helpers import run_cli, run_cli_process, save_tiny_model
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
    import ray  # the extra 'ray', in dev: a missing one fails here, it does not skip

    try:
        code, _, err = run_cli([*args, "--output", tmp_path / "ray.jsonl", "--engine", "ray", "--workers", "2"], capsys)
    finally:
        ray.shutdown()
    assert code == 2, err
    assert read_jsonl(tmp_path / "ray.jsonl") == read_jsonl(tmp_path / "local.jsonl")
    progress = [line for line in err.splitlines() if line.startswith("ray: ")]
    assert re.fullmatch(r"ray: 6/6 images, \d+\.\d images/s, 1 error", progress[-1]), progress
    assert "deprecated" not in err  # Ray's notices of the arguments it is phasing out were printed on every run


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
    rows = [json.loads(row["items"]) for row in _batches(iter(todo), 2)]
    assert rows == [
        [[3, "/photos/3.jpg"], [4, "/photos/4.jpg"]],
        [[5, "/photos/5.jpg"], [9, "/photos/9.jpg"]],
        [[10, "/photos/10.jpg"]],
    ]


def test_ray_actors_and_gpus_default_to_one_per_gpu_else_half_the_cpus():
    from captionkit.errors import InputError
    from captionkit.jobs.ray_engine import RaySettings, actor_pool

    auto = RaySettings(None, None, None)
    assert actor_pool(auto, {"CPU": 64.0, "GPU": 8.0}, None) == (8, 1.0)
    assert actor_pool(auto, {"CPU": 64.0, "GPU": 8.0}, "cpu") == (32, 0.0)
    assert actor_pool(auto, {"CPU": 2.0}, None) == (1, 0.0)
    assert actor_pool(auto, {"CPU": 1.0}, None) == (1, 0.0)
    assert actor_pool(RaySettings(None, None, 0.5), {"CPU": 16.0, "GPU": 2.0}, None) == (4, 0.5)
    assert actor_pool(RaySettings(None, 3, None), {"CPU": 16.0, "GPU": 2.0}, None) == (3, 1.0)
    with pytest.raises(InputError, match=r"^--gpus-per-worker: 1 GPUs per worker, but the Ray cluster has 0$"):
        actor_pool(RaySettings(None, None, 1.0), {"CPU": 4.0}, None)


@pytest.mark.parametrize(
    ("option", "error"),
    [
        (["--gpus-per-worker", "two"], "--gpus-per-worker: expected a number >= 0 or auto, got 'two'"),
        (["--workers", "-1"], "--workers: expected a number of captioner actors or auto, got '-1'"),
    ],
)
def test_bad_ray_options_fail_in_one_line(tmp_path, capsys, option, error):
    model = save_tiny_model(tmp_path / "tiny")
    code, _, err = run_cli(["caption", real_photos(1)[0], "--model", model, "--engine", "ray", *option], capsys)
    assert code == 1
    assert err.strip().splitlines() == [f"captionkit: error: {error}"]


def test_a_ray_address_nobody_answers_at_fails_in_one_line_and_keeps_the_output(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out.jsonl"
    out.write_text('{"image": "earlier.jpg", "caption": "kept"}\n')
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
        args = ["caption", real_photos(1)[0], "--model", model, "--engine", "ray", "--ray-address", address]
        code, _, err = run_cli([*args, "--output", out, "--overwrite"], capsys)
    assert code == 1
    ((line,),) = [err.strip().splitlines()]
    assert line.startswith(f"captionkit: error: --ray-address: no Ray cluster answers at {address} (")
    assert out.read_text() == '{"image": "earlier.jpg", "caption": "kept"}\n'


@pytest.mark.slow  # a minute: Ray twice in subprocesses
def test_a_resumed_ray_run_gives_every_record_once_equal_to_the_plain_run(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "tiny")
    write_webdataset(real_photos(10), tmp_path / "shards", per_shard=5, image_bytes={7: b"not an image"})
    args = ["caption", tmp_path / "shards", "--model", model, "--beams", "2", "--max-length", "8", "--batch-size", "2"]
    args += ["--threads", "1"]
    assert run_cli([*args, "--output", tmp_path / "plain.jsonl"], capsys)[0] == 2
    plain = (tmp_path / "plain.jsonl").read_text().splitlines(keepends=True)
    out = tmp_path / "ray.jsonl"
    # An interrupted run: 4 whole records (2 batches, so the rest is batched as in the plain run) and a torn line.
    out.write_text("".join(plain[:4]) + plain[4][:25])
    done = run_cli_process([*args, "--output", out, "--engine", "ray", "--resume"], env=CHILD_ENV)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "resuming: 4 of 10 images already done" in done.stderr
    assert read_jsonl(out) == read_jsonl(tmp_path / "plain.jsonl")


# This checkout's captionkit in the child processes, whatever is installed.
CHILD_ENV = {**QUIET_ENV, "PYTHONPATH": str(Path(captionkit.__file__).parents[1])}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # a minute: a Ray head node and a run that joins it
def test_a_run_joins_a_running_ray_cluster_by_its_address(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "tiny")
    write_webdataset(real_photos(6), tmp_path / "shards", per_shard=3)
    args = ["caption", tmp_path / "shards", "--model", model, "--beams", "2", "--max-length", "5", "--batch-size", "2"]
    args += ["--threads", "1"]
    assert run_cli([*args, "--output", tmp_path / "plain.jsonl"], capsys)[0] == 0
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ck-ray-")  # short: Ray's socket paths live under it
    ray_cli = Path(sys.executable).parent / "ray"
    head_args = ["start", "--head", "--block", "--num-cpus", "2", "--port", str(port), "--temp-dir", temp_dir]
    head_args += ["--include-dashboard", "false", "--disable-usage-stats"]
    # A throwaway cluster on loopback: no token authentication (recent Ray turns it on for `ray start`).
    no_auth = {"RAY_AUTH_MODE": "disabled"}
    # Its own session, so that this test ends exactly the processes it started (never `ray stop`: it ends every
    # Ray on the machine).
    head = subprocess.Popen(
        [str(ray_cli), *head_args],
        env={**os.environ, **QUIET_ENV, **no_auth},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, "ray start --head failed"
                time.sleep(0.5)
        out = tmp_path / "ray.jsonl"
        address = ["--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--workers", "2"]
        done = run_cli_process([*args, "--output", out, *address], env={**CHILD_ENV, **no_auth}, timeout=240)
    finally:
        os.killpg(head.pid, signal.SIGINT)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ray: 2 captioner actors, 0 GPUs each" in done.stderr
    assert read_jsonl(out) == read_jsonl(tmp_path / "plain.jsonl")


@pytest.fixture
def local_ray():
    """Ray started in this process for one test (its runs join it), shut down after."""
    import ray  # the extra 'ray', in dev: a missing one fails here, it does not skip

    from captionkit.jobs.ray_engine import connect

    connect(None)
    yield ray
    ray.shutdown()


def _decode_killing_its_worker(monkeypatch, image: str, tries: Path, kills: int) -> None:
    """Make the Ray decode task of the batch holding ``image`` kill its own worker process (SIGKILL, as the OOM
    killer would) on its first ``kills`` tries, a line appended to ``tries`` per try. The function reaches the
    workers pickled by value (it is local), the real decode inside; a batch's tries run one after another."""
    from captionkit.jobs import ray_engine

    decode = ray_engine._decode

    def dying(row, preprocessing, limits):
        if image in row["items"]:
            with tries.open("a") as log:
                log.write(f"{os.getpid()}\n")
            if len(tries.read_text().splitlines()) <= kills:
                os.kill(os.getpid(), signal.SIGKILL)
        return decode(row, preprocessing, limits)

    monkeypatch.setattr(ray_engine, "_decode", dying)


@pytest.mark.slow  # half a minute: a local Ray, a worker killed and its task run again
def test_killing_a_decode_tasks_worker_loses_nothing_and_merge_finds_every_input_once(
    tmp_path, capsys, monkeypatch, local_ray
):
    from captionkit.jobs.sharding import parse_shard

    model = save_tiny_model(tmp_path / "tiny")
    photos = real_photos(8)
    write_webdataset(photos, tmp_path / "shards", per_shard=4)
    args = ["caption", tmp_path / "shards", "--model", model, "--beams", "2", "--max-length", "5", "--batch-size", "2"]
    args += ["--threads", "1"]
    assert run_cli([*args, "--output", tmp_path / "plain.jsonl"], capsys)[0] == 0
    # Part 0 of 2 on the default engine, part 1 on Ray, where the decode task of its first image's batch dies once.
    assert run_cli([*args, "--output", tmp_path / "out.jsonl", "--shard", "0/2"], capsys)[0] == 0
    victim = next(photo.stem for photo in photos if parse_shard("1/2").owns(photo.stem))
    tries = tmp_path / "tries"
    _decode_killing_its_worker(monkeypatch, victim, tries, kills=1)
    code, _, err = run_cli([*args, "--output", tmp_path / "out.jsonl", "--shard", "1/2", "--engine", "ray"], capsys)
    assert code == 0, err
    assert len(set(tries.read_text().splitlines())) == 2  # two tries of that batch, in two worker processes
    parts = sorted(tmp_path.glob("out.part-*.jsonl"))
    merged = tmp_path / "all.jsonl"
    code, _, err = run_cli(["merge", *parts, "--output", merged, "--inputs", tmp_path / "shards"], capsys)
    assert code == 0, err
    images = [record["image"] for record in read_jsonl(merged)]
    assert len(images) == len(set(images)) == 8 and any(victim in image for image in images)
    assert read_jsonl(merged) == read_jsonl(tmp_path / "plain.jsonl")


@pytest.mark.slow  # half a minute: a local Ray, a worker killed on every try of one task
def test_a_batch_whose_worker_dies_on_every_try_stops_the_ray_run_in_one_line(tmp_path, capsys, monkeypatch, local_ray):
    from captionkit.jobs.ray_engine import DECODE_RETRIES

    model = save_tiny_model(tmp_path / "tiny")
    photos = real_photos(6)
    write_webdataset(photos, tmp_path / "shards", per_shard=3)
    args = ["caption", tmp_path / "shards", "--model", model, "--max-length", "5", "--batch-size", "2"]
    assert run_cli([*args, "--output", tmp_path / "plain.jsonl"], capsys)[0] == 0
    tries = tmp_path / "tries"
    _decode_killing_its_worker(monkeypatch, photos[-1].stem, tries, kills=1000)  # the last batch: an image that kills
    out = tmp_path / "ray.jsonl"
    code, _, err = run_cli([*args, "--output", out, "--engine", "ray", "--workers", "1"], capsys)
    assert code == 1
    line = [line for line in err.splitlines() if line.startswith("captionkit: error:")]
    assert line == [
        f"captionkit: error: --engine ray: a worker process died on each of {DECODE_RETRIES + 1} tries of the same "
        "batch (The worker died unexpectedly while executing this task. Check python-core-worker-*.log files for "
        "more information.); the records before that batch are written"
    ]
    assert len(tries.read_text().splitlines()) == DECODE_RETRIES + 1  # retried, then given up: never forever
    written, plain = read_jsonl(out), read_jsonl(tmp_path / "plain.jsonl")
    assert written == plain[: len(written)] and len(written) <= 4  # whole batches before the one that kills


@pytest.mark.slow  # a minute: a local Ray, one Ray Data run per window of two batches
def test_the_ray_driver_holds_a_window_of_inputs_whatever_the_sample_count(tmp_path, monkeypatch, local_ray):
    """The driver streams the inputs into Ray a window at a time: at each write, the objects alive in it that name an
    input sample (member paths, input records; no garbage collection on the way) are one window's, with 8 samples as
    with 32, not one per sample (the shards' own paths are held, one per shard)."""
    import gc
    import io

    from PIL import Image

    from captionkit.decoding.options import decoding_request
    from captionkit.jobs import ray_engine, run
    from captionkit.jobs.inputs import InputImage
    from captionkit.jobs.outputs import RecordWriter, read_records
    from captionkit.jobs.run import CaptionJobOptions
    from captionkit.shards import ShardSample, writing

    monkeypatch.setattr(ray_engine, "WINDOW_BATCHES", 2)
    model = save_tiny_model(tmp_path / "tiny")
    buffer = io.BytesIO()
    Image.open(real_photos(1)[0]).resize((8, 8)).save(buffer, "JPEG")
    samples = [writing.Sample(f"{i:06d}", buffer.getvalue(), f"caption {i}") for i in range(32)]
    alive: list[int] = []
    source = tmp_path / "shards"

    def names_an_input(thing: object) -> bool:
        if type(thing) is type(source):  # a member: shards/00001.tar/000005.jpg (type(): no lazy module's warning)
            return thing.parent.suffix == ".tar" and str(thing).startswith(str(source))
        return type(thing) in (InputImage, ShardSample)

    class CountingWriter(RecordWriter):
        def write(self, records) -> None:
            super().write(records)
            alive.append(sum(names_an_input(thing) for thing in gc.get_objects()))

    monkeypatch.setattr(run, "RecordWriter", CountingWriter)

    def most_alive(count: int) -> int:
        shutil.rmtree(source, ignore_errors=True)
        writing.write_webdataset(samples[:count], source, per_shard=4)
        alive.clear()
        output = tmp_path / f"{count}.jsonl"
        request = decoding_request(max_new_tokens=3)
        options = CaptionJobOptions(
            [str(source)], model, request, batch_size=4, output=output, engine="ray", workers="1", threads=1
        )
        outcome = run.run_caption_job(options)
        assert outcome.summary.captioned == count == len(read_records(output, "jsonl"))
        assert len(alive) == count // 4  # a write per batch of 4
        return max(alive)

    few, many = most_alive(8), most_alive(32)
    assert many == few, (few, many)  # the list the driver used to build held 24 more with 32 samples than with 8
