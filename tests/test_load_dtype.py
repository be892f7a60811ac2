"""Loading in half precision reads the weights in it: ``Captioner.from_pretrained(dtype="bf16")`` (and ``--dtype``)
builds every family's model in bf16 and casts each stored tensor as it loads, instead of loading fp32 and casting
after. The result must be the old one exactly: the same tensors, bit for bit, and the same captions and scores.

Checkpoints: every family's tiny model as captionkit saves it, and BLIP and GIT as their hub repositories store them
(transformers 5 and transformers 4 layouts).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from _data import real_photos
from _helpers import FAMILIES, save_tiny_model
from _hub_models import hub_layout
from captionkit import Captioner
from captionkit.loading import load_pretrained
from captionkit.models import native
from captionkit.models.registry import load_model
from captionkit.precision import default_dtype

pytestmark = pytest.mark.usefixtures("single_thread")

NATIVE_FAMILIES = ("prefix-gpt2", "cnn-lstm", "cnn-lstm-attention")
# BLIP and GIT as their hub repositories store them: transformers 5's layout, and transformers 4's.
HUB_LAYOUTS = ("blip-hub", "blip-hub-transformers4", "git-hub", "git-hub-transformers4")
CHECKPOINTS = (*FAMILIES, *HUB_LAYOUTS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every checkpoint of CHECKPOINTS, by name, saved once for the module."""
    root = tmp_path_factory.mktemp("load-dtype")
    saved = {family: save_tiny_model(root / family, family) for family in FAMILIES}
    for name in HUB_LAYOUTS:
        hub_layout(name.split("-")[0], root / name, legacy=name.endswith("transformers4"))
        saved[name] = root / name
    return saved


def all_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, tied ones under each of their names."""
    return dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))


@contextmanager
def registered_dtypes() -> Iterator[list[tuple[str, torch.dtype]]]:
    """(name, dtype) of every parameter and buffer any module registers within the block: what a model is built
    with, and what a loader puts in place of a tensor by assigning a new one."""
    seen: list[tuple[str, torch.dtype]] = []

    def record(_module: torch.nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            seen.append((name, tensor.dtype))

    hooks = [register_module_parameter_registration_hook(record), register_module_buffer_registration_hook(record)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_bf16_load_equals_the_fp32_load_cast_afterwards(name: str, checkpoints: dict[str, Path]) -> None:
    cast_after = all_tensors(load_model(checkpoints[name]).to(torch.bfloat16))
    read_in_bf16 = all_tensors(Captioner.from_pretrained(checkpoints[name], device="cpu", dtype="bf16").model)
    assert read_in_bf16.keys() == cast_after.keys()
    assert {n: t.dtype for n, t in read_in_bf16.items()} == {n: t.dtype for n, t in cast_after.items()}
    assert {tensor.dtype for tensor in read_in_bf16.values()} <= {torch.bfloat16, torch.int64}
    differ = [n for n, tensor in read_in_bf16.items() if not torch.equal(tensor, cast_after[n])]
    assert differ == []


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_a_bf16_load_never_builds_a_float32_parameter_or_buffer(name: str, checkpoints: dict[str, Path]) -> None:
    with registered_dtypes() as seen:
        model = Captioner.from_pretrained(checkpoints[name], device="cpu", dtype="bf16").model
    assert len(seen) >= len(all_tensors(model))  # the hooks saw the model being built
    assert [(n, dtype) for n, dtype in seen if dtype == torch.float32] == []
    with registered_dtypes() as seen:  # the hooks would see one: fp32 is what a plain load builds
        load_model(checkpoints[name])
    assert any(dtype == torch.float32 for _, dtype in seen)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_bf16_captions_equal_those_of_the_model_cast_after_loading(name: str, checkpoints: dict[str, Path]) -> None:
    photos = real_photos(2)
    fp32 = load_pretrained(checkpoints[name])
    cast_after = Captioner(fp32.model, fp32.tokenizer, fp32.preprocessing, device="cpu", dtype="bf16")
    read_in_bf16 = Captioner.from_pretrained(checkpoints[name], device="cpu", dtype="bf16")
    options: dict[str, Any] = {"num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 6}
    expected = [[(c.caption, c.score) for c in r.captions] for r in cast_after.caption(photos, **options)]
    found = [[(c.caption, c.score) for c in r.captions] for r in read_in_bf16.caption(photos, **options)]
    assert found == expected


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_fp32_captions_are_unchanged(name: str, checkpoints: dict[str, Path]) -> None:
    """The default load reads the stored tensors as they are, as before (no dtype reaches transformers)."""
    photos = real_photos(2)
    fp32 = load_pretrained(checkpoints[name])
    assert {t.dtype for t in all_tensors(fp32.model).values()} <= {torch.float32, torch.int64}
    plain = Captioner(fp32.model, fp32.tokenizer, fp32.preprocessing, device="cpu")
    named = Captioner.from_pretrained(checkpoints[name], device="cpu", dtype="fp32")
    expected = [(r.caption, r.score) for r in plain.caption(photos, max_new_tokens=6)]
    assert [(r.caption, r.score) for r in named.caption(photos, max_new_tokens=6)] == expected


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_native_weights_are_copied_in_one_stored_tensor_at_a_time(
    family: str, checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is never read whole (that alone would hold every fp32 tensor next to the bf16 model): each stored
    tensor is read once, after the one before it is gone."""
    opened = safe_open
    reads: list[str] = []
    alive_at_read: list[int] = []
    previous: list[weakref.ref[torch.Tensor]] = []

    class Reader:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.file = opened(*args, **kwargs)

        def __enter__(self) -> Reader:
            self.file.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.__exit__(*exc)

        def keys(self) -> list[str]:
            return list(self.file.keys())

        def get_tensor(self, name: str) -> torch.Tensor:
            alive_at_read.append(sum(ref() is not None for ref in previous))
            tensor = self.file.get_tensor(name)
            reads.append(name)
            previous.append(weakref.ref(tensor))
            return tensor

    monkeypatch.setattr(native, "safe_open", Reader, raising=False)
    model = Captioner.from_pretrained(checkpoints[family], device="cpu", dtype="bf16").model
    stored = load_file(str(checkpoints[family] / "model.safetensors"))
    assert sorted(reads) == sorted(stored)
    assert set(alive_at_read) == {0}
    state = model.state_dict()
    assert all(torch.equal(state[n], tensor.to(state[n].dtype)) for n, tensor in stored.items())


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_native_fp32_load_holds_the_stored_tensors_exactly(family: str, checkpoints: dict[str, Path]) -> None:
    state = load_model(checkpoints[family]).state_dict()
    stored = load_file(str(checkpoints[family] / "model.safetensors"))
    assert all(state[n].dtype == tensor.dtype and torch.equal(state[n], tensor) for n, tensor in stored.items())
    # A tensor the file does not hold is tied to one it does (GPT-2's output layer to its token table, stored once).
    filled = {state[n].data_ptr() for n in stored}
    assert all(tensor.data_ptr() in filled for n, tensor in state.items() if n not in stored)
    assert len(set(state) - set(stored)) == (1 if family == "prefix-gpt2" else 0)


def test_default_dtype_builds_in_it_and_restores_torch_default() -> None:
    with default_dtype(torch.bfloat16):
        assert torch.nn.Linear(2, 2).weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32
    with pytest.raises(RuntimeError), default_dtype(torch.float16):
        raise RuntimeError("inside")
    assert torch.get_default_dtype() == torch.float32
    with default_dtype(None):
        assert torch.nn.Linear(2, 2).weight.dtype == torch.float32
