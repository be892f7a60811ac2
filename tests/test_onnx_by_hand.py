"""ONNX export checked by hand: each graph against the PyTorch model at batch sizes and past lengths other than the
ones it was traced at (its dynamic axes), and a checkpoint with nan/inf weights refused before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from _helpers import run_cli, save_tiny_model
from captionkit.errors import InputError
from captionkit.export.onnx import OnnxCaptionModel, export_onnx, export_onnx_graphs
from captionkit.models.base import Encoded
from captionkit.models.native import WEIGHTS_FILE

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, OnnxCaptionModel]:
    from conftest import tiny_vit_gpt2

    model = tiny_vit_gpt2(seed=1)
    directory = tmp_path_factory.mktemp("onnx")
    # Traced at 2 images, 3 rows and a past of 2: every size below differs from one of those.
    export_onnx_graphs(model, (32, 32), directory)
    return model, OnnxCaptionModel(directory, threads=1)


@pytest.mark.parametrize("images", [1, 3])
def test_each_graph_equals_pytorch_at_other_sizes(exported: tuple, make_pixels: Callable, images: int) -> None:
    model, onnx_model = exported
    pixels = make_pixels(images, images)
    with torch.no_grad():
        tokens = model.encode(pixels).tokens
    _assert_close(onnx_model.encode(pixels).tokens, tokens)
    # Each graph from the same inputs as PyTorch's: differences do not carry from one graph into the next.
    state = onnx_model.init_state(Encoded(tokens))
    decoder = model.ved.decoder
    keys, values = state["cross"]
    for layer, block in enumerate(decoder.transformer.h):
        key, value = block.crossattention.c_attn(tokens).detach().split(decoder.config.n_embd, dim=2)
        heads = decoder.config.n_head
        want_key = key.reshape(images, tokens.shape[1], heads, -1).transpose(1, 2)
        want_value = value.reshape(images, tokens.shape[1], heads, -1).transpose(1, 2)
        _assert_close(torch.from_numpy(keys[layer]), want_key)
        _assert_close(torch.from_numpy(values[layer]), want_value)
    # Past lengths 0 to 5, each step's logits against GPT-2's own forward over the whole prefix.
    ids = torch.randint(3, model.vocab_size, (images, 6), generator=torch.Generator().manual_seed(images))
    with torch.no_grad():
        reference = decoder(input_ids=ids, encoder_hidden_states=tokens, use_cache=True)
    for position in range(ids.shape[1]):
        assert state["keys"].shape[3] == position
        log_probs, state = onnx_model.step(ids[:, position], state)
        want = torch.log_softmax(reference.logits[:, position], dim=-1)
        _assert_close(log_probs, want)
    past = reference.past_key_values
    for layer in range(decoder.config.n_layer):
        want_key, want_value = _self_attention_cache(past, layer)
        _assert_close(torch.from_numpy(state["keys"][layer]), want_key)
        _assert_close(torch.from_numpy(state["values"][layer]), want_value)


def _assert_close(found: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to 1e-5 of the largest magnitude: float32 rounding grows with it (at log-probabilities near 20, PyTorch's
    own step protocol and the graph differ from GPT-2's forward by 1e-5 to 5e-5)."""
    torch.testing.assert_close(found, want, rtol=0, atol=1e-5 * max(1.0, want.abs().max().item()))


def _self_attention_cache(past: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s self-attention keys and values from GPT-2's EncoderDecoderCache (transformers 5)."""
    cached = past.self_attention_cache.layers[layer]
    return cached.keys, cached.values


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused_before_writing(
    tmp_path: Path, bad: float, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exported, such weights wrote graphs whose log-probabilities are nan, with no word said."""
    source = save_tiny_model(tmp_path / "model")
    weights = load_file(source / WEIGHTS_FILE)
    name = next(name for name in sorted(weights) if name.endswith("lm_head.weight") or name.endswith("wte.weight"))
    weights[name][3, 0] = bad
    save_file(weights, source / WEIGHTS_FILE)
    parameter = f"ved.{name}"  # the model's name for it: the file holds the transformers layout
    output = tmp_path / "export"
    with pytest.raises(InputError) as raised:
        export_onnx(source, output)
    assert str(raised.value) == f"{source}: {parameter} holds nan or inf values, which would make its graphs decode nan"
    assert not output.exists()
    code, out, err = run_cli(["export", "onnx", "--model", source, "--output", output], capsys)
    assert (code, out) == (1, "")
    assert (
        err
        == f"captionkit: error: {source}: {parameter} holds nan or inf values, which would make its graphs decode nan\n"
    )
    assert err.count("\n") == 1
    assert not output.exists()
