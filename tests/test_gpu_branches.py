"""The GPU-only branches of training and captioning, checked on the CPU (issue 22.3-22.4): the device check is
mocked, or the call is recorded rather than run.

- AdamW is fused on CUDA (one kernel for all parameters), not on the CPU;
- DataLoaders keep worker processes up (persistent) and page-lock batches (pinned) on CUDA;
- ``--batch-size auto`` probes powers of two until the GPU runs out of memory, then halves the last that fit;
- a training step reads no tensor value back to the host (``.item()``, ``float()``...) except at log steps.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from _helpers import save_tiny_model, tiny_model
from captionkit.api import Captioner
from captionkit.config import load_train_config
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.decoding import DecodingConfig
from captionkit.images import ImageLimits, Preprocessing
from captionkit.jobs import batch_size as auto_batch
from captionkit.jobs.batch import caption_files
from captionkit.jobs.pipeline import load_batches, normalise_on_device
from captionkit.training import run as training_run
from captionkit.training.loop import train
from captionkit.training.setup import build_optimizer
from captionkit.training.steps import CrossEntropyStep

pytestmark = pytest.mark.usefixtures("single_thread")

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 16, 4, 2, seed=1, image_size=32)


def config_for(scenes: Path, *extra: str) -> Any:
    return load_train_config(
        None,
        [
            "train.device=cpu",
            f"data.train={scenes}",
            "data.first_caption_only=true",
            "model.preset=tiny",
            "tokenizer.vocab_size=300",
            "train.batch_size=4",
            "train.warmup_steps=1",
            "train.threads=1",
            "train.tensorboard=false",
            *extra,
        ],
    )


# --- fused AdamW ---------------------------------------------------------------------------------------------


def test_adamw_is_fused_on_cuda_only(scenes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, Any]] = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, params: Any, **options: Any) -> None:
            made.append(options)
            super().__init__(params, **(options | {"fused": None}))  # only the choice is under test

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    model, config = tiny_model("vit-gpt2"), config_for(scenes)
    build_optimizer(model, config, CUDA)
    build_optimizer(model, config, CPU)
    assert [options["fused"] for options in made] == [True, None]
    assert made[0]["lr"] == config.train.lr and made[0]["betas"] == config.train.betas


# --- DataLoader arguments -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "workers", "persistent", "pinned"),
    [(CUDA, 2, True, True), (CPU, 2, True, False), (CUDA, 0, False, True), (CPU, 0, False, False)],
)
def test_training_loader_keeps_workers_and_pins_on_cuda(
    device: torch.device, workers: int, persistent: bool, pinned: bool
) -> None:
    setup = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0))
    loader = training_run._loader(setup, list(range(8)), device, workers, batch_size=4)  # type: ignore[arg-type]
    assert (loader.num_workers, loader.persistent_workers, loader.pin_memory) == (workers, persistent, pinned)


def test_caption_job_pins_its_worker_batches_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    class Recorded:
        def __init__(self, data: Any, **options: Any) -> None:
            seen.append(options)

        def __iter__(self) -> Iterator[Any]:
            return iter(())

    monkeypatch.setattr("captionkit.jobs.pipeline.DataLoader", Recorded)
    preprocessing = SimpleNamespace(size=(32, 32), draft_size=None)
    for workers, pin in ((2, True), (2, False), (0, True), (0, False)):
        load_batches([Path("a.jpg")], preprocessing, None, 4, workers, 3, pin_memory=pin)  # type: ignore[arg-type]
    assert [(o["num_workers"], o["pin_memory"], o["prefetch_factor"]) for o in seen] == [
        (2, True, 3),
        (2, False, 3),
        (0, True, None),  # in-process decoding pins too (in this process, before the batch is handed out)
        (0, False, None),
    ]


@pytest.mark.parametrize("pin", [True, False])  # what caption_files asks for on CUDA, and on the CPU
def test_caption_job_without_workers_pins_each_batch_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pin: bool
) -> None:
    pinned: list[torch.Tensor] = []

    def record(tensor: torch.Tensor, *args: Any) -> torch.Tensor:  # page-locking needs a GPU: recorded instead
        pinned.append(tensor.clone())
        return pinned[-1]

    monkeypatch.setattr(torch.Tensor, "pin_memory", record)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)  # what the DataLoader asks before pinning
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *args: CUDA)
    paths = [tmp_path / f"{index}.png" for index in range(3)]
    for index, path in enumerate(paths):
        Image.new("RGB", (40, 30), (index * 80, 10, 200)).save(path)
    batches = list(load_batches(paths, Preprocessing.for_size(32, 32), ImageLimits(), 2, 0, pin_memory=pin))
    assert [batch.good for batch in batches] == [[0, 1], [2]]
    assert [batch.pixels.shape for batch in batches] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    # Pinned: each batch hands out the page-locked copy of its pixels; else nothing is pinned.
    assert [id(tensor) for tensor in pinned] == ([id(batch.pixels) for batch in batches] if pin else [])


# --- preprocessing finished on the device ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "preprocessing",
    [
        Preprocessing.for_size(32, 32),  # ViT: mean = std = 0.5
        Preprocessing(  # CLIP's constants, resized then centre-cropped
            size=(24, 24),
            image_mean=(0.48145466, 0.4578275, 0.40821073),
            image_std=(0.26862954, 0.26130258, 0.27577711),
            crop_from=28,
        ),
        Preprocessing(size=(16, 20), do_rescale=False, image_mean=(100.0, 110.0, 120.0), image_std=(50.0, 60.0, 70.0)),
        Preprocessing(size=(16, 16), do_normalize=False),
    ],
)
def test_normalising_on_the_device_gives_the_cpu_pixels_bit_for_bit(preprocessing: Preprocessing) -> None:
    # The same torch operations a GPU runs, here on CPU tensors.
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 30), (17, 50))]
    uint8 = torch.from_numpy(np.stack([preprocessing.resized(image) for image in images]))
    found = normalise_on_device(preprocessing, uint8)
    expected = torch.from_numpy(preprocessing(images))
    assert uint8.dtype == torch.uint8 and found.dtype == torch.float32 and found.is_contiguous()
    assert found.shape == expected.shape == (2, 3, *preprocessing.size)
    assert torch.equal(found, expected)


class Records:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)


def test_caption_job_on_cuda_copies_pinned_uint8_batches_and_normalises_them_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    captioner = Captioner.from_pretrained(save_tiny_model(tmp_path / "model"), device="cpu")
    paths = [tmp_path / f"{index}.png" for index in range(5)]
    for index, path in enumerate(paths):
        Image.new("RGB", (40 + index, 30), (index * 50, 90, 200 - index * 30)).save(path)
    paths.insert(2, tmp_path / "missing.png")
    config = DecodingConfig(max_new_tokens=6, num_beams=2)
    on_cpu = Records()
    caption_files(captioner, paths, config, on_cpu, batch_size=2)  # type: ignore[arg-type]

    copies: list[tuple[torch.dtype, bool]] = []
    pinned: list[torch.Tensor] = []
    real_to = torch.Tensor.to

    def to(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args and args[0] == CUDA:  # the batch's copy to the pretend GPU: recorded, left on the CPU
            copies.append((tensor.dtype, kwargs.get("non_blocking", False)))
            return tensor
        return real_to(tensor, *args, **kwargs)

    def pin(tensor: torch.Tensor, *args: Any) -> torch.Tensor:
        pinned.append(tensor)
        return tensor

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *args: CUDA)
    monkeypatch.setattr(captioner, "device", CUDA)
    on_gpu = Records()
    caption_files(captioner, paths, config, on_gpu, batch_size=2)  # type: ignore[arg-type]
    assert on_gpu.records == on_cpu.records and len(on_cpu.records) == 6
    assert copies == [(torch.uint8, True)] * 3  # every batch: pinned, a quarter of the bytes, without blocking
    assert len(pinned) == 3


# --- deterministic cuBLAS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "cuda_in_use", "after", "warning"),
    [
        (None, False, ":4096:8", None),  # set before cuBLAS first runs: it takes effect
        (":16:8", True, ":16:8", None),  # the user's deterministic setting is kept
        (None, True, None, "CUDA was in use before CUBLAS_WORKSPACE_CONFIG could be set"),
        (":0:0", False, ":0:0", "CUBLAS_WORKSPACE_CONFIG=:0:0 is not one of cuBLAS's deterministic settings"),
    ],
)
def test_deterministic_runs_set_cublas_workspace_before_cuda_runs_or_say_why_not(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    before: str | None,
    cuda_in_use: bool,
    after: str | None,
    warning: str | None,
) -> None:
    variable = training_run.CUBLAS_WORKSPACE
    monkeypatch.setenv(variable, before or "")  # recorded, so that whatever the run sets is undone after the test
    if before is None:
        monkeypatch.delenv(variable)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda_in_use)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level("WARNING", logger="captionkit.training"), training_run.deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
    assert training_run.os.environ.get(variable) == after
    advice = "so cuBLAS sums may differ run to run; set CUBLAS_WORKSPACE_CONFIG=:4096:8 before Python starts"
    expected = [] if warning is None else [f"train.deterministic: {warning}, {advice}"]
    assert [record.getMessage() for record in caplog.records] == expected


def test_deterministic_cublas_says_nothing_without_a_gpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(training_run.CUBLAS_WORKSPACE, ":0:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger="captionkit.training"):
        training_run.deterministic_cublas()
    assert caplog.records == []


# --- --batch-size auto ------------------------------------------------------------------------------------------


class FakeCuda:
    """``generate`` on a pretend GPU holding ``room`` images: beyond, CUDA's out-of-memory error."""

    def __init__(self, room: int, error: RuntimeError | None = None) -> None:
        self.room = room
        self.error = error or torch.cuda.OutOfMemoryError("CUDA out of memory (pretend)")
        self.tried: list[int] = []
        self.configs: list[DecodingConfig] = []
        self.dtypes: set[torch.dtype] = set()
        self.released: list[Any] = []  # models whose captured decoder steps were freed

    def generate(self, model: Any, pixels: torch.Tensor, config: DecodingConfig) -> list[Any]:
        self.tried.append(len(pixels))
        self.configs.append(config)
        self.dtypes.add(pixels.dtype)
        if len(pixels) > self.room:
            raise self.error
        return []


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    real_randn = torch.randn

    def randn(*shape: Any, device: Any = None, dtype: Any = None, **kwargs: Any) -> torch.Tensor:
        return real_randn(*shape, dtype=dtype, **kwargs)  # the pretend GPU's tensors live on the CPU

    monkeypatch.setattr(torch, "randn", randn)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def make(room: int, error: RuntimeError | None = None) -> FakeCuda:
        fake = FakeCuda(room, error)
        monkeypatch.setattr(auto_batch, "generate", fake.generate)
        monkeypatch.setattr(auto_batch, "release_graphs", fake.released.append)
        return fake

    yield make


@pytest.mark.parametrize(
    ("room", "tried", "chosen"),
    [
        (100, [8, 16, 32, 64, 128], 32),  # 64 fit, 128 did not: half of 64
        (8, [8, 16], 4),
        (5, [8], 1),  # not even 8: one image at a time
        (10_000, [8, 16, 32, 64, 128, 256, 512, 1024], auto_batch.MAX_AUTO_BATCH),  # the cap, not halved
    ],
)
def test_auto_batch_size_probes_until_out_of_memory(fake_cuda: Any, room: int, tried: list[int], chosen: int) -> None:
    fake = fake_cuda(room)
    model = tiny_model("vit-gpt2").to(torch.bfloat16)
    config = DecodingConfig(num_beams=4, max_new_tokens=7)
    assert auto_batch.choose_batch_size(model, (32, 32), config, CUDA) == chosen
    assert fake.tried == tried
    # Every probe decodes the run's settings with each caption forced to full length, in the model's dtype.
    assert {(c.num_beams, c.max_new_tokens, c.min_new_tokens) for c in fake.configs} == {(4, 7, 7)}
    assert fake.dtypes == {torch.bfloat16}
    assert fake.released == [model]  # the probes' CUDA graphs do not stay to take the run's memory


def test_auto_batch_size_takes_a_graph_captures_out_of_memory_error(fake_cuda: Any) -> None:
    """Out of memory while a CUDA graph is captured (CAPTIONKIT_CUDA_GRAPHS) ends the capture with a plain
    RuntimeError, not torch.cuda.OutOfMemoryError: it ended --batch-size auto with a traceback."""
    fake = fake_cuda(16, RuntimeError("CUDA error: out of memory"))
    assert auto_batch.choose_batch_size(tiny_model("vit-gpt2"), (32, 32), DecodingConfig(), CUDA) == 8
    assert fake.tried == [8, 16, 32]


def test_auto_batch_size_lets_other_errors_through(fake_cuda: Any) -> None:
    fake_cuda(8, RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        auto_batch.choose_batch_size(tiny_model("vit-gpt2"), (32, 32), DecodingConfig(), CUDA)


def test_auto_batch_size_on_a_cpu_is_fixed(fake_cuda: Any) -> None:
    fake = fake_cuda(100)
    assert auto_batch.choose_batch_size(tiny_model("vit-gpt2"), (32, 32), DecodingConfig(), CPU) == auto_batch.CPU_BATCH
    assert fake.tried == []


# --- host reads in the training step ----------------------------------------------------------------------------

_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__}
_TORCH = str(Path(torch.__file__).parent)


class HostReads(TorchFunctionMode):
    """Every read of a tensor's value into Python (what waits for a GPU), with the captionkit line that made it,
    and a "step" marker at each training step."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _READS or (func is torch.Tensor.__setitem__ and _has_mask(args[1])):
            self.events.append(_caller())
        return func(*args, **(kwargs or {}))


def _has_mask(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_TORCH) or "overrides" in frame.f_code.co_filename
    ):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"


def test_a_training_step_reads_tensors_back_only_at_log_steps(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = HostReads()
    step_call = CrossEntropyStep.__call__

    def marked(self: CrossEntropyStep, *args: Any, **kwargs: Any) -> Any:
        reads.events.append("step")
        return step_call(self, *args, **kwargs)

    monkeypatch.setattr(CrossEntropyStep, "__call__", marked)

    class Fused(torch.optim.AdamW):  # what a GPU runs (torch's CPU kernels have it too): no per-parameter reads
        def __init__(self, params: Any, **options: Any) -> None:
            super().__init__(params, **(options | {"fused": True}))

    monkeypatch.setattr(torch.optim, "AdamW", Fused)
    config = config_for(
        scenes, "train.steps=8", "train.log_every=4", "train.eval_every=100", "train.checkpoint_every=0"
    )
    with reads:
        train(config, tmp_path / "run", progress=False)
    steps = [i for i, event in enumerate(reads.events) if event == "step"]
    assert len(steps) == 8
    # What each step reads: from its start to the next step's (the loop's logging in between included).
    per_step = [reads.events[a + 1 : b] for a, b in zip(steps, [*steps[1:], len(reads.events)], strict=True)]
    # The token count of the step's batch is read on the host side, from the batch as collated (before it goes
    # to the device): no wait for the GPU. transformers' SDPA attention checks the padding mask itself
    # (``padding_mask.all()``), inside the model's forward: not captionkit's to remove. Nothing else between two
    # steps that are not logged.
    host_side = {"steps.py:<genexpr>", "masking_utils.py:_ignore_causal_mask_sdpa"}
    for number, events in enumerate(per_step, start=1):
        device_reads = [event for event in events if event not in host_side]
        if number % 4:
            assert device_reads == [], (number, sorted(__import__("collections").Counter(device_reads).items()))
        else:  # a log step reads the smoothed loss once (and finishing the run reads it again)
            assert "loop.py:_loop" in device_reads, (number, device_reads)
