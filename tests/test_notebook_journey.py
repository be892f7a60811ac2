"""The Python API as a notebook uses it: a captioner's repr, caption_pil called by hand, tensors straight from a
photo, and one captioner shared by the threads of a ThreadPoolExecutor."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
import pydoc
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from _data import real_photos
from _helpers import save_tiny_model
from captionkit import api
from captionkit.api import Captioner, CaptionResult
from captionkit.errors import ConfigError, ImageError, InputError
from captionkit.images import load_image

pytestmark = pytest.mark.usefixtures("single_thread")
GREEDY = {"num_beams": 1, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def captioner(model_dir: Path) -> Captioner:
    return Captioner.from_pretrained(model_dir, device="cpu")


def test_a_captioner_shows_what_it_is(model_dir: Path, captioner: Captioner) -> None:
    """A cell ending in the captioner showed ``<captionkit.api.Captioner object at 0x7f...>``."""
    assert repr(captioner) == f"Captioner({str(model_dir)!r}, family='vit-gpt2', device='cpu', dtype='float32')"
    half = Captioner.from_pretrained(model_dir, device="cpu", dtype="bf16")
    assert repr(half) == f"Captioner({str(model_dir)!r}, family='vit-gpt2', device='cpu', dtype='bfloat16')"
    built = Captioner(captioner.model, captioner.tokenizer, captioner.preprocessing, device="cpu")
    assert repr(built) == "Captioner(family='vit-gpt2', device='cpu', dtype='float32')"


def test_caption_pil_takes_one_image_and_the_default_options(captioner: Captioner) -> None:
    """caption_pil(image) failed with "'JpegImageFile' object is not iterable", and without a config with "missing 1
    required positional argument"."""
    image = Image.open(real_photos(1)[0])
    [expected] = captioner.caption(image)
    assert captioner.caption_pil(image) == [expected.captions]
    assert captioner.caption_pil([image, image.convert("L")], captioner.decoding_config(**GREEDY)) == [
        result.captions for result in captioner.caption([image, image.convert("L")], **GREEDY)
    ]


def test_caption_pil_refuses_options_given_as_a_dict(captioner: Captioner) -> None:
    """A dict failed deep in decoding: "AttributeError: 'dict' object has no attribute 'prompt_ids'"."""
    image = Image.open(real_photos(1)[0])
    with pytest.raises(TypeError) as raised:
        captioner.caption_pil([image], {"num_beams": 1})  # type: ignore[arg-type]
    assert str(raised.value) == (
        "config: expected a DecodingConfig, got dict: build one with captioner.decoding_config(num_beams=4, ...)"
    )


def test_caption_pil_names_a_closed_image(captioner: Captioner) -> None:
    """A closed image failed inside Pillow: a bare AssertionError (opened lazily) or "Operation on closed image"."""
    photo = real_photos(1)[0]
    with Image.open(photo) as lazy:
        pass
    loaded = Image.open(photo)
    loaded.load()
    loaded.close()
    reason = "the PIL image was closed before it was captioned (caption it inside its with block)"
    for closed in (lazy, loaded):
        with pytest.raises(ImageError) as raised:
            captioner.caption_pil([closed])
        assert str(raised.value) == f"{photo}: {reason}"


def test_a_channels_last_tensor_is_refused_with_the_way_out(captioner: Captioner) -> None:
    """``torch.from_numpy(np.asarray(photo))`` is (height, width, 3): its refusal named no way to pass it."""
    pixels = np.asarray(Image.open(real_photos(1)[0]).convert("RGB"))
    tensor = torch.from_numpy(pixels.copy())
    with pytest.raises(ImageError) as raised:
        captioner.caption(tensor, **GREEDY)
    assert str(raised.value) == (
        f"<tensor>: a tensor of shape {tuple(tensor.shape)} is not an image: give (channels, height, width) or "
        "(height, width) (channels last: tensor.permute(2, 0, 1), or its numpy array)"
    )
    expected = captioner.caption(pixels, **GREEDY)[0].captions
    assert captioner.caption(tensor.permute(2, 0, 1), **GREEDY)[0].captions == expected


def _spied(
    function: Callable[..., Any], kind: str, calls: list[tuple[str, float, float]], lock: threading.Lock
) -> Callable[..., Any]:
    """``function``, recording when each call ran; a pause inside widens the window in which another thread's call
    could run beside it."""

    def spy(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        time.sleep(0.02)
        try:
            return function(*args, **kwargs)
        finally:
            with lock:
                calls.append((kind, start, time.monotonic()))

    return spy


def test_threads_sharing_a_captioner_get_the_sequential_captions(
    captioner: Captioner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attention maps switch vit-gpt2's attention implementation while they run: a call beside them in another thread
    crashed ("RuntimeError: stack expects a non-empty TensorList") or decoded with the other implementation, and the
    decoder could be left in eager attention."""
    photos = real_photos(4)
    options = {"num_beams": 2, "max_new_tokens": 5}

    def run(attention: bool) -> list[list[list[int]]]:
        results = captioner.caption(photos, attention=attention, **options)
        return [[caption.token_ids for caption in result.captions] for result in results]

    expected = run(False)
    assert run(True) == expected
    calls: list[tuple[str, float, float]] = []
    recording = threading.Lock()
    monkeypatch.setattr(api, "generate", _spied(api.generate, "generate", calls, recording))
    monkeypatch.setattr(api, "caption_maps", _spied(api.caption_maps, "maps", calls, recording))
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(run, [index % 2 == 0 for index in range(8)]))
    assert found == [expected] * 8
    maps = [(start, end) for kind, start, end in calls if kind == "maps"]
    assert len(maps) == 4
    beside = [(kind, start, end) for kind, start, end in calls for m in maps if start < m[1] and m[0] < end]
    assert len(beside) == len(maps)  # each map call overlaps itself alone
    ved = captioner.model.ved  # type: ignore[attr-defined]
    assert ved.decoder.config._attn_implementation == ved.config._attn_implementation


def test_numpy_scalars_are_options_like_the_numbers_they_hold(captioner: Captioner) -> None:
    """A sweep over ``np.arange`` passed np.int64: "num_beams: must be an integer, got np.int64(2)" (np.float32 and
    np.True_ too), and batch_size likewise."""
    photos = real_photos(2)
    plain = {"num_beams": 2, "max_new_tokens": 5}
    expected = captioner.caption(photos, batch_size=1, **plain)
    swept = {"num_beams": np.arange(3)[2], "max_new_tokens": np.int32(5)}
    assert captioner.caption(photos, batch_size=np.int64(1), **swept) == expected  # type: ignore[arg-type]
    sampled = {"do_sample": True, "temperature": 0.5, "seed": 3, "max_new_tokens": 5}
    expected = captioner.caption(photos, **sampled)
    as_numpy = {"do_sample": np.True_, "temperature": np.float32(0.5), "seed": np.uint8(3), "max_new_tokens": 5}
    assert captioner.caption(photos, **as_numpy) == expected
    with pytest.raises(InputError, match=r"^num_beams: must be an integer, got 2\.5$"):
        captioner.caption(photos, num_beams=np.float64(2.5))
    with pytest.raises(InputError, match=r"^batch_size: must be an integer >= 1, got np\.int64\(0\)$"):
        captioner.caption(photos, batch_size=np.int64(0))  # type: ignore[arg-type]


def test_help_says_what_results_hold_and_which_devices_load() -> None:
    """help(CaptionResult) listed ``caption`` and ``score`` with nothing under them, and help(from_pretrained) did not
    say which devices it takes."""
    shown = pydoc.render_doc(CaptionResult, renderer=pydoc.plaintext)
    assert "caption\n |      The best caption's text (an ``ImageError`` for an image that could not be read)." in shown
    assert "score\n |      The best caption's score: its log-probability / its length (eos included)" in shown
    loading = pydoc.render_doc(Captioner.from_pretrained, renderer=pydoc.plaintext)
    assert '``device``: "cpu", "cuda", "cuda:N", "mps" or a ``torch.device`` (None: the GPU when there' in loading


def test_errors_come_back_from_a_process_pool_and_copy(tmp_path: Path) -> None:
    """pickle rebuilt an error from its message alone: InputError(message) failed ("missing 1 required positional
    argument: 'reason'"), so a ProcessPoolExecutor whose worker met a bad image broke ("BrokenProcessPool: A process
    in the process pool was terminated abruptly"), and copy.deepcopy of an error failed."""
    missing = tmp_path / "missing.jpg"
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    with pool, pytest.raises(ImageError) as raised:
        pool.submit(load_image, missing).result()
    assert (str(raised.value), raised.value.source, raised.value.reason) == (
        f"{missing}: no such file",
        str(missing),
        "no such file",
    )
    error = ConfigError("train.steps", "must be an integer >= 1, got 0")
    for copied in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
        assert (type(copied), str(copied), copied.source, copied.reason) == (
            ConfigError,
            "train.steps: must be an integer >= 1, got 0",
            "train.steps",
            "must be an integer >= 1, got 0",
        )


def test_a_captioner_pickles_and_copies_with_a_lock_of_its_own(model_dir: Path) -> None:
    """The model lock made a captioner unpicklable ("cannot pickle '_thread.lock' object"): a process pool, joblib,
    copy.deepcopy and torch.save of one failed, as they had not before. (A fresh one: once a vit-gpt2 has given
    attention maps, transformers' output-capturing hooks on it are local functions, which pickle refuses.)"""
    captioner = Captioner.from_pretrained(model_dir, device="cpu")
    photo = real_photos(1)[0]
    [expected] = captioner.caption(photo, **GREEDY)
    for copied in (pickle.loads(pickle.dumps(captioner)), copy.deepcopy(captioner)):
        assert copied.caption(photo, **GREEDY) == [expected]
        assert copied._model_lock is not captioner._model_lock and not copied._model_lock.locked()
