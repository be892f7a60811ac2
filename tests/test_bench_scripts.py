"""The benchmark scripts' own argument and error handling (benchmarks/), without running a measurement."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from captionkit.cli.caption import _rate as caption_rate
from captionkit.errors import InputError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmark(name: str) -> ModuleType:
    """A module of benchmarks/, which is not a package."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_check2.sh"])
@pytest.mark.parametrize("order", ["smoke first", "smoke last"])
def test_gpu_checks_take_smoke_before_or_after_the_data_dir(tmp_path: Path, script: str, order: str) -> None:
    """`--smoke DATA_DIR` took --smoke as DATA_DIR and ran the full GPU run; PYTHON=true makes every step a no-op."""
    data = tmp_path / "data"
    data.mkdir()
    arguments = ["--smoke", str(data)] if order == "smoke first" else [str(data), "--smoke"]
    environment = os.environ | {"OUT": str(tmp_path / "out"), "PYTHON": "true", "ONLY": "none"}
    command = ["bash", str(BENCHMARKS / script), *arguments]
    root = BENCHMARKS.parent
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=root, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "=== environment (--smoke): " in done.stdout
    assert f", data {data}" in done.stdout


def test_gpu_check_without_a_data_dir_is_one_usage_line(tmp_path: Path) -> None:
    environment = os.environ | {"OUT": str(tmp_path / "out")}
    command = ["bash", str(BENCHMARKS / "gpu_check.sh"), "--smoke"]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (1, "usage: bash benchmarks/gpu_check.sh DATA_DIR [--smoke]\n")


def test_export_benchmarks_name_a_missing_model_in_one_line(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCHMARKS / "bench_precision.py"), "--model", str(tmp_path / "missing")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"bench_precision: error: {tmp_path / 'missing'}: no such directory (and not a hub id)\n"


def test_export_benchmarks_refuse_a_folder_without_images(tmp_path: Path) -> None:
    """It divided by the number of photos: a ZeroDivisionError after loading the model twice."""
    side_by_side = import_benchmark("_side_by_side")
    with pytest.raises(InputError, match=f"^{tmp_path}: no images found$"):
        side_by_side.photo_paths(tmp_path, 8)


def test_scoring_ratio_of_a_stage_too_short_to_count_is_not_a_number() -> None:
    """os.times() counts 10 ms ticks: a small stage's 0 CPU seconds printed a ratio of 10000000.0x."""
    scoring = import_benchmark("bench_scoring")
    assert scoring.ratio(0.03, 0.0) == "    n/a"
    assert scoring.ratio(0.5, 0.25) == "   2.0x"


# --- the GPU check's plumbing, every measurement replaced by canned figures ----------------------------------------

BENCH_JSON = {
    "dtype": "bf16",
    "batch_size": 8,
    "captionkit": {"images_per_s": 100.0, "peak_gpu_mb": 1.5, "fraction_of_compute_limit": 0.1},
    "transformers_generate": {"images_per_s": 50.0, "peak_gpu_mb": 3.0},
    "speedup": 2.0,
    "speedup_spread": {"min": 1.9, "max": 2.1},
    "captions_equal_to_fp32": 1.0,
    "captions_identical": True,
}
# The smoke run's graphs and compile groups: CAPTIONKIT_CUDA_GRAPHS mode, dtype, batch size.
GRAPH_RUNS = [("0", "bf16", 8), ("1", "bf16", 8), ("1", "fp32", 4), ("compile", "bf16", 8)]
# caption's closing line as the CLI writes it: "...; 250.0 images/s (0.01 s; loading the model 2.50 s)".
CLOSING_LINE = "3 images: 3 captioned, 0 errors" + caption_rate(3, 0.012, 2.5)


def stand_ins(folder: Path) -> Path:
    """A folder with ``python3`` and ``nvidia-smi`` stand-ins: the summary and the recipe run in this Python; env,
    captioning, benchmarks and resume checks print canned results at once (env fails when NO_TORCH is set);
    nvidia-smi reports a GPU 50% busy."""
    folder.mkdir()
    python = folder / "python3"
    python.write_text(
        f"""#!/usr/bin/env bash
case " $* " in
    *" benchmarks/gpu_check.py summary "* | *" benchmarks/gpu_check.py recipe "*) exec {sys.executable} "$@" ;;
    *" benchmarks/gpu_check.py env "*) [ -z "${{NO_TORCH:-}}" ] || exit 1; echo '{{"torch": "stand-in"}}' ;;
    *" benchmarks/gpu_check.py resume-check "*) echo '{{"bitwise_equal": true}}' >"$3" ;;
    *" -m captionkit.cli benchmark "*) echo {shlex.quote(json.dumps(BENCH_JSON))} ;;
    *" -m captionkit.cli caption "*)
        while [ "$1" != --output ]; do shift; done
        printf '{{}}\\n{{}}\\n{{}}\\n' >"$2"
        echo {shlex.quote(CLOSING_LINE)} >&2 ;;
esac
""",
        encoding="utf-8",
    )
    smi = folder / "nvidia-smi"
    smi.write_text('#!/usr/bin/env bash\n[ $# = 0 ] && echo "stand-in GPU" || printf "40\\n60\\n"\n', encoding="utf-8")
    for tool in (python, smi):
        tool.chmod(0o755)
    return folder


def run_gpu_check(tmp_path: Path, root: Path, only: str, **environment: str) -> subprocess.CompletedProcess:
    data = tmp_path / "data"
    data.mkdir()
    bin_dir = stand_ins(tmp_path / "bin")
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "OUT": str(tmp_path / "out"), "ONLY": only, **environment}
    command = ["bash", str(root / "benchmarks" / "gpu_check.sh"), str(data), "--smoke"]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=root, timeout=120, check=False)


def test_gpu_check_leaves_only_its_log_and_a_summary_of_every_step(tmp_path: Path) -> None:
    """At most 8 files come back from a GPU machine's $OUT, which got one per step (about 20): the summary could be
    among those left behind. The caption's pace was null: the closing line has '; R images/s', not ': R images/s'."""
    python = str(tmp_path / "bin" / "python3")
    done = run_gpu_check(tmp_path, BENCHMARKS.parent, "caption,graphs,bench,resume,compile", PYTHON=python)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == ["gpu_check.log", "gpu_summary.json"]
    summary = json.loads((out / "gpu_summary.json").read_text())
    assert [(step["step"], step["exit"]) for step in summary["steps"][:4]] == [
        ("nvidia-smi", 0),
        ("env", 0),
        ("prepare-model", 0),
        ("prepare-photos", 0),
    ]
    assert len(summary["steps"]) == 13 and {step["exit"] for step in summary["steps"]} == {0}
    # Compiling may take a step's whole limit: it runs after every other group.
    assert summary["steps"][-1]["step"] == "benchmark-graphs-compile-bf16-8"
    assert summary["environment"] == {"torch": "stand-in"}
    caption = summary["caption"]
    assert (caption["images"], caption["images_per_s_captioning"], caption["captioning_seconds"]) == (3, 250.0, 0.01)
    assert (caption["model_load_seconds"], caption["gpu_busy_share"]) == (2.5, 0.5)
    names = ["bench_bf16_003.json"] + [f"bench_graphs_{m}_{d}_00{b}.json" for m, d, b in GRAPH_RUNS]
    assert [row["file"] for row in summary["benchmark"]] == sorted(names)
    assert summary["benchmark"][0]["speedup"] == 2.0
    assert summary["benchmark_json"] == dict.fromkeys(sorted(names), BENCH_JSON)
    assert summary["exact_resume"] == [{"bitwise_equal": True}, {"bitwise_equal": True}]


def test_gpu_check_runs_python3_where_there_is_no_venv_and_no_python(tmp_path: Path) -> None:
    """A GPU machine has no .venv (2 GB; 64 MiB travel) and its torch is python3's: `python` ran no step there."""
    root = tmp_path / "repo"
    shutil.copytree(BENCHMARKS, root / "benchmarks")
    done = run_gpu_check(tmp_path, root, "none")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "gpu_summary.json").read_text())
    assert summary["environment"] == {"torch": "stand-in"}
    assert [(step["step"], step["exit"]) for step in summary["steps"]] == [("nvidia-smi", 0), ("env", 0)]


def test_gpu_summary_names_a_torn_part_and_keeps_the_others(tmp_path: Path) -> None:
    """A step killed at its limit can leave half a JSON file: the summary raised on it and was never rewritten."""
    gpu_check = import_benchmark("gpu_check")
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "steps.tsv").write_text("env\t0\t1.50\nresume-default\t124\t120.00\n")
    (parts / "env.json").write_text('{"torch": "2.13"}')
    (parts / "bench_bf16_256.json").write_text(json.dumps(BENCH_JSON))
    (parts / "bench_fp32_064.json").write_text('{"dtype": "fp')
    (parts / "resume_default.json").write_text('{"device": ')
    (parts / "train_metrics.jsonl").write_text('{"step": 5}\n{"step": 1')
    output = tmp_path / "gpu_summary.json"
    found = gpu_check.summary(parts, output)
    assert json.loads(output.read_text()) == found
    assert found["environment"] == {"torch": "2.13"}
    assert found["steps"][1] == {"step": "resume-default", "exit": 124, "seconds": 120.0}
    good, torn = found["benchmark"]
    assert (good["file"], good["speedup"]) == ("bench_bf16_256.json", 2.0)
    assert torn["file"] == "bench_fp32_064.json"
    assert torn["error"].startswith("bench_fp32_064.json: not JSON (the step failed or was cut short): ")
    assert found["exact_resume"][0]["error"].startswith("resume_default.json: not JSON")
    assert found["train"][0] == {"step": 5} and found["train"][1]["text"] == '{"step": 1'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu_summary.json", "parts"]


@pytest.mark.parametrize("frozen_clock", [False, True])
def test_gpu_check2_leaves_only_its_log_and_the_summary(tmp_path: Path, frozen_clock: bool) -> None:
    """It left 9 files in $OUT until its last line (one past what comes back), 6 after it. A caption step timed at
    0.00 s (the stand-in's is that quick now and then; the frozen clock makes it so) divided by zero: its part was no
    JSON and the summary lost the images captioned."""
    data = tmp_path / "data"
    data.mkdir()
    bin_dir = stand_ins(tmp_path / "bin")
    if frozen_clock:
        clock = bin_dir / "date"
        clock.write_text("#!/usr/bin/env bash\necho 1000.000000000\n", encoding="utf-8")
        clock.chmod(0o755)
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "OUT": str(tmp_path / "out"), "PYTHON": str(bin_dir / "python3")}
    command = ["bash", str(BENCHMARKS / "gpu_check2.sh"), str(data), "--smoke"]
    root = BENCHMARKS.parent
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=root, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == ["gpu_check2.log", "gpu_summary.json"]
    summary = json.loads((out / "gpu_summary.json").read_text())
    names = ["bench_graphs_0_bf16_8.json", "bench_graphs_1_bf16_8.json", "bench_graphs_1_fp32_4.json"]
    assert [row["file"] for row in summary["benchmark"]] == names
    assert (summary["caption"]["images"], summary["caption"]["gpu_busy_share"]) == (3, 0.5)
    assert (summary["caption"]["images_per_s"] is None) == frozen_clock
    assert [step["step"] for step in summary["steps"]][-2:] == ["caption-graphs-1", "attention-test"]


def test_gpu_check_records_a_failed_environment_step(tmp_path: Path) -> None:
    """The env step piped into tee under sh, which has no pipefail: a python without torch was recorded as exit 0."""
    python = str(tmp_path / "bin" / "python3")
    done = run_gpu_check(tmp_path, BENCHMARKS.parent, "none", PYTHON=python, NO_TORCH="1")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "gpu_summary.json").read_text())
    assert [(step["step"], step["exit"]) for step in summary["steps"]] == [("nvidia-smi", 0), ("env", 1)]
    assert "environment" not in summary
