"""``captionkit benchmark``: side-by-side figures on a tiny preset, FLOP counts, and bad arguments."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from _data import SHARED_DATA, real_photos
from _helpers import run_cli, run_cli_process, save_tiny_model
from _hub_models import hub_layout
from captionkit import benchmark
from captionkit.benchmark import BenchmarkSettings, estimate_flops
from captionkit.models.git import GitCaptionConfig
from captionkit.models.vit_gpt2 import PRESETS

pytestmark = pytest.mark.usefixtures("single_thread")


# bf16 in the slow suite: a run is about 10 s (a fresh process per engine for its peak memory).
@pytest.mark.parametrize("dtype", ["fp32", pytest.param("bf16", marks=pytest.mark.slow)])
def test_benchmark_on_real_images_reports_both_engines(
    dtype: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = real_photos(2)
    assert len(photos) == 2, f"real photos missing under {SHARED_DATA}"
    for photo in photos:
        shutil.copy(photo, tmp_path / photo.name)
    args = ["benchmark", "--preset", "tiny", "--batch-size", "3", "--beams", "2", "--max-length", "6"]
    args += ["--repeats", "2", "--threads", "1", "--images", str(tmp_path), "--device", "cpu", "--dtype", dtype]
    code, out, err = run_cli(args, capsys)
    assert code == 0
    result = json.loads(out)
    assert (result["device"], result["dtype"]) == ("cpu", dtype)
    assert result["inputs"] == f"2 images from {tmp_path}"
    assert (result["batch_size"], result["beams"], result["max_new_tokens"], result["torch_threads"]) == (3, 2, 6, 1)
    if dtype == "fp32":
        assert result["captions_identical"] is True and result["caption_agreement"] == 1.0
        assert result["captions_equal_to_fp32"] == 1.0
    else:  # bf16 rounding may change a caption: the share is the one the same model and pixels give here
        settings = BenchmarkSettings(preset="tiny", batch_size=3, beams=2, max_length=6, images=tmp_path)
        model, pixels, _ = benchmark._model_and_pixels(settings)
        fp32 = benchmark._captions(model, pixels, benchmark._config(settings))
        bf16 = benchmark._captions(model.to(torch.bfloat16), pixels, benchmark._config(settings))
        assert result["captions_equal_to_fp32"] == sum(a == b for a, b in zip(fp32, bf16, strict=True)) / 3
    for engine in ("captionkit", "transformers_generate"):
        figures = result[engine]
        assert len(figures["batch_times_s"]) == 2
        assert figures["images_per_s"] == pytest.approx(3 / figures["latency_p50_s"])
        assert figures["latency_p50_s"] <= figures["latency_p95_s"] <= max(figures["batch_times_s"])
        assert figures["peak_rss_mb"] > 50 and figures["cpu_s_p50"] > 0 and figures["peak_gpu_mb"] is None
        # The time the measured matmul rate allows, over the time taken; both are timings on a shared machine (and a
        # CPU's small bf16 matmul may run slower than the model's mix), so only their quotient is checked.
        limit = result["compute"]["limit_s_per_batch"]
        assert figures["fraction_of_compute_limit"] == pytest.approx(limit / figures["latency_p50_s"]) and limit > 0
    assert result["speedup"] == pytest.approx(
        result["transformers_generate"]["latency_p50_s"] / result["captionkit"]["latency_p50_s"]
    )
    assert result["speedup_cpu_time"] == pytest.approx(
        result["transformers_generate"]["cpu_s_p50"] / result["captionkit"]["cpu_s_p50"]
    )
    theirs, ours = result["transformers_generate"]["batch_times_s"], result["captionkit"]["batch_times_s"]
    ratios = [t / o for t, o in zip(theirs, ours, strict=True)]
    assert result["speedup_spread"] == {"min": min(ratios), "max": max(ratios)}
    assert "min_new_tokens = max_new_tokens" in result["forced_length"]
    assert result["compute"]["matmul_gflops"] > 0.1
    assert "speedup" in err and "transformers_generate" in err


def test_flop_estimate_of_the_base_preset() -> None:
    flops = estimate_flops(SimpleNamespace(config=PRESETS["base"]), batch=8, beams=4, new_tokens=20)
    # ViT-B/16 at 224 px: 17.56 G multiply-adds per image (the "17.6 GFLOPs" of model zoos), 2 FLOPs each.
    assert flops["encoder_gflop"] / 8 == pytest.approx(2 * 17.56, abs=0.05)
    # Cross keys/values: 12 layers x 197 tokens x 768 x 1536 multiply-adds per image.
    assert flops["cross_keys_values_gflop"] == pytest.approx(8 * 12 * 2 * 197 * 768 * 1536 / 1e9)
    # One step for 32 rows is about 8.8 GFLOP, dominated by the blocks (~6.3) and the 50257-word head (~2.5).
    assert flops["decoder_steps_gflop"] / 19.25 == pytest.approx(8.9, abs=0.2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "tiny", "--model", "x"], "give exactly one"),
        ([], "give exactly one"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--preset", "tiny", "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["--preset", "tiny", "--repeats", "0"], "--repeats: must be at least 1"),
        (["--preset", "tiny", "--threads", "0"], "--threads: must be in [1, "),
        # A few thousand threads crashed OpenMP (exit 139, no message); more than the CPUs time oversubscription.
        (["--preset", "tiny", "--threads", "100000"], "(the CPUs this process may use), got 100000"),
        (["--model", "/no/such/model"], "/no/such/model"),
        (["--preset", "tiny", "--device", "cpu", "--dtype", "fp16"], "--dtype: fp16 needs a GPU"),
        (["--preset", "tiny", "--dtype", "fp64"], "--dtype: unknown dtype 'fp64' (expected one of fp32, bf16, fp16)"),
        (["--preset", "tiny", "--device", "tpu:x"], "--device: unknown device 'tpu:x'"),
    ],
)
def test_bad_arguments_exit_1_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["benchmark", *args], capsys)
    assert code == 1
    assert out == ""
    assert message in err and err.count("\n") == 1


def test_a_length_the_model_cannot_take_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    limit = PRESETS["tiny"].decoder_positions
    args = ["benchmark", "--preset", "tiny", "--max-length", str(limit + 1), "--batch-size", "1", "--repeats", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 1 and out == ""
    assert err == f"captionkit: error: --max-length: must be at most {limit} for this model, got {limit + 1}\n"


def test_a_folder_without_images_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["benchmark", "--preset", "tiny", "--images", str(tmp_path)], capsys)
    assert code == 1
    assert f"{tmp_path}: no images found" in err


def test_benchmark_of_a_saved_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = save_tiny_model(tmp_path / "model")
    args = ["benchmark", "--model", str(source), "--beams", "1", "--batch-size", "2", "--max-length", "4"]
    code, out, _ = run_cli([*args, "--repeats", "1"], capsys)
    assert code == 0
    result = json.loads(out)
    assert (result["model"], result["inputs"]) == (str(source), "random pixels (seed 0)")
    assert result["captions_identical"] is True
    assert len(result["captionkit"]["batch_times_s"]) == 1


@pytest.mark.slow  # about 9 s each
@pytest.mark.parametrize("family", ["blip", "git"])
def test_benchmark_of_a_hub_blip_or_git(family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hub_layout(family, tmp_path / family)
    args = ["benchmark", "--model", str(tmp_path / family), "--beams", "2", "--batch-size", "2", "--max-length", "4"]
    code, out, _ = run_cli([*args, "--repeats", "1"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["captions_identical"] is True and result["compute"]["total_gflop"] > 0


def test_flop_estimate_of_git_base() -> None:
    flops = estimate_flops(SimpleNamespace(config=GitCaptionConfig()), batch=1, beams=1, new_tokens=1)
    # CLIP ViT-B/16 at 224 px as ViT-B/16 above, plus the 768 x 768 projection of its 197 tokens.
    assert flops["encoder_gflop"] == pytest.approx(2 * 17.56 + 2 * 197 * 768 * 768 / 1e9, abs=0.05)
    # The 197 image tokens through 6 text layers: projections and MLP (2 x 197 x 768 x 9216) + attention.
    assert flops["cross_keys_values_gflop"] == pytest.approx(6 * (2 * 197 * 768 * 9216 + 4 * 197**2 * 768) / 1e9)


@pytest.mark.slow  # the benchmark in a process of its own, with its engines' fresh processes for peak memory
def test_benchmark_as_a_process_is_quiet(tmp_path: Path) -> None:
    """Issue 18.5/22.5: stderr holds captionkit's own lines only: no transformers "Loading weights" bars, no tqdm
    progress bars, no leaked-semaphore warning from the peak-memory child processes."""
    model = save_tiny_model(tmp_path / "tiny")
    photos = real_photos(2)
    assert len(photos) == 2, f"real photos missing under {SHARED_DATA}"
    for photo in photos:
        shutil.copy(photo, tmp_path / photo.name)
    args = ["benchmark", "--model", model, "--images", tmp_path, "--batch-size", "2", "--beams", "2"]
    done = run_cli_process([*args, "--max-length", "4", "--repeats", "1", "--threads", "1"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["captions_identical"] is True
    for noise in ("Loading weights", "leaked semaphore", "%|", "it/s]", "s/it]", "Warning", "warn("):
        assert noise not in done.stderr, f"{noise!r} in stderr:\n{done.stderr}"
    assert done.stderr.splitlines()[0] == "warming up"


def test_engines_take_turns_going_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed order would give one engine, every repeat, whatever running right after the other brings."""
    calls: list[str] = []

    def engine(name: str):
        return lambda model, pixels, *_: calls.append(name) or [[1, 2]] * pixels.shape[0]

    monkeypatch.setattr(benchmark, "_captions", engine("captionkit"))
    monkeypatch.setattr(benchmark, "_generate_reference", engine("generate"))
    monkeypatch.setattr(benchmark, "_peaks_in_child", lambda *_: (2**20, None))
    settings = BenchmarkSettings(preset="tiny", batch_size=1, beams=1, max_length=2, repeats=3)
    result = benchmark.run_benchmark(settings)
    warm_up = ["captionkit", "captionkit", "generate"]  # the fp32 captions, then each engine's warm-up
    assert calls == [*warm_up, "captionkit", "generate", "generate", "captionkit", "captionkit", "generate"]
    assert len(result["captionkit"]["batch_times_s"]) == len(result["transformers_generate"]["batch_times_s"]) == 3


def test_on_a_gpu_generate_is_measured_before_captionkit_keeps_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak GPU memory is the allocator's in one process: captionkit's kept CUDA graphs (CAPTIONKIT_CUDA_GRAPHS),
    those of its fp32 run included, must not be counted in generate's peak."""
    calls: list[str] = []
    monkeypatch.setattr(benchmark, "release_graphs", lambda model: calls.append(f"release {model}") or 1)
    monkeypatch.setattr(benchmark, "_gpu_peak", lambda run: (run(), 100 * len(calls)))
    ours = lambda: calls.append("captionkit") or [[1]]  # noqa: E731
    reference = lambda: calls.append("generate") or [[2]]  # noqa: E731
    found = benchmark._peaks_on_gpu("model", ours, reference)  # type: ignore[arg-type]
    assert calls == ["release model", "generate", "captionkit"]
    assert found == ([[1]], [[2]], {"captionkit": (None, 300), "transformers_generate": (None, 200)})


def bench_inference(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inference.py"
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300, check=False)


def test_bench_inference_names_a_bad_argument_in_one_line() -> None:
    done = bench_inference("--preset", "tiny", "--batch-size", "0")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "bench_inference: error: --batch-size: must be at least 1, got 0\n"


@pytest.mark.slow  # two benchmarks, each with its engines' fresh processes for peak memory
def test_bench_inference_is_quiet() -> None:
    """Its stderr is the two tables: no transformers warning about generate's defaults ("Both `max_new_tokens` and
    `max_length` seem to have been set")."""
    done = bench_inference(
        "--preset", "tiny", "--threads", "1", "--repeats", "1", "--batch-size", "1", "--max-length", "2"
    )
    assert done.returncode == 0, done.stderr
    assert [result["beams"] for result in json.loads(done.stdout)] == [4, 1]
    for noise in ("[transformers]", "Warning", "warn("):
        assert noise not in done.stderr, f"{noise!r} in stderr:\n{done.stderr}"
    assert done.stderr.count("speedup") == 2


def test_one_photo_fills_the_batch_and_is_counted_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = real_photos(1)[0]
    shutil.copy(photo, tmp_path / photo.name)
    monkeypatch.setattr(benchmark, "_peaks_in_child", lambda *_: (2**20, None))
    settings = BenchmarkSettings(preset="tiny", batch_size=2, beams=1, max_length=2, repeats=1, images=tmp_path)
    result = benchmark.run_benchmark(settings)
    assert result["inputs"] == f"1 image from {tmp_path}"
    assert result["captions_identical"] is True


def test_export_benchmarks_take_turns_going_first() -> None:
    """benchmarks/_side_by_side.py (bench_int8, bench_onnx): each engine goes first in every other batch."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from _side_by_side import caption_side_by_side
    finally:
        sys.path.pop(0)
    calls: list[str] = []

    class Engine:
        def __init__(self, name: str) -> None:
            self.name = name

        def caption_pil(self, images: list, config: object) -> list:
            calls.append(self.name)
            return [[SimpleNamespace(token_ids=[len(calls)])] for _ in images]

    images = [object()] * 6
    engines = {"a": Engine("a"), "b": Engine("b")}
    captions, seconds = caption_side_by_side(engines, images, None, batch_size=2)  # type: ignore[arg-type]
    warm_up = ["a", "b"]
    assert calls == [*warm_up, "a", "b", "b", "a", "a", "b"]  # three batches
    assert [len(captions[name]) for name in "ab"] == [6, 6] and [len(seconds[name]) for name in "ab"] == [3, 3]


def test_a_family_generate_cannot_run_is_named_with_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = save_tiny_model(tmp_path / "lstm", family="cnn-lstm")
    code, out, err = run_cli(["benchmark", "--model", source, "--batch-size", "1", "--repeats", "1"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"captionkit: error: --model: {source} is a cnn-lstm model; the comparison with generate needs blip, git or "
        "vit-gpt2\n"
    )


def test_an_onnx_export_is_pointed_to_the_onnx_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal said what generate cannot run and not what times an ONNX export instead: the ONNX benchmark
    script, given the checkpoint (it exports it itself)."""
    from captionkit.export.onnx import export_onnx

    export_onnx(save_tiny_model(tmp_path / "fp32"), tmp_path / "onnx")
    args = ["benchmark", "--model", tmp_path / "onnx", "--batch-size", "1", "--repeats", "1"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"captionkit: error: --model: {tmp_path / 'onnx'} is a vit-gpt2-onnx model; the comparison with generate "
        "needs blip, git or vit-gpt2; to time an ONNX export against PyTorch, run benchmarks/bench_onnx.py --model "
        "CHECKPOINT, with the checkpoint it was exported from\n"
    )
    script = Path(__file__).parents[1] / "benchmarks" / "bench_onnx.py"
    usage = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--model MODEL" in usage


def test_ctrl_c_exits_130_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """typer's own answer to Ctrl-C was a silent exit 130."""

    def stopped(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "_peaks_in_child", stopped)
    args = ["benchmark", "--preset", "tiny", "--batch-size", "1", "--beams", "1", "--max-length", "2", "--repeats", "1"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (130, "")
    assert err.splitlines()[-1] == "captionkit: interrupted: no figures written"
    assert "Traceback" not in err


def test_the_peak_memory_process_leaves_ctrl_c_to_the_command() -> None:
    """Ctrl-C at a terminal reaches the whole process group: the pool's process printed "Process SpawnPoolWorker-1:"
    and its traceback beside the command's one line. It ignores SIGINT; this process's handler is as it was."""
    before = signal.getsignal(signal.SIGINT)
    with benchmark._pool_deaf_to_ctrl_c() as pool:
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == before


def test_the_result_says_whether_weights_were_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAPTIONKIT_PACKED_LINEAR=0 changes speed and memory (the README's table has rows with and without it); the
    JSON and the table did not say which a run had."""
    monkeypatch.setattr(benchmark, "_peaks_in_child", lambda *_: (2**20, None))
    settings = BenchmarkSettings(preset="tiny", batch_size=1, beams=1, max_length=2, repeats=1)
    monkeypatch.setenv("CAPTIONKIT_PACKED_LINEAR", "0")
    result = benchmark.run_benchmark(settings)
    assert result["packed_linear"] is False
    assert (
        benchmark.format_table(result)
        .splitlines()[0]
        .endswith(", 1 thread, random pixels (seed 0), CAPTIONKIT_PACKED_LINEAR=0")
    )
    monkeypatch.delenv("CAPTIONKIT_PACKED_LINEAR")
    assert benchmark.run_benchmark(settings)["packed_linear"] is torch.backends.mkldnn.is_available()
