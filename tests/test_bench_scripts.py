"""The benchmark scripts' own argument and error handling (benchmarks/), without running a measurement."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

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
