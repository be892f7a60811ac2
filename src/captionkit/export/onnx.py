"""ONNX export of a ViT + GPT-2 captioner, and a step-protocol adapter that decodes with onnxruntime.

Three graphs, written next to the tokenizer and preprocessing files so the directory is self-contained:

* ``encoder.onnx``: pixels (B, 3, H, W) -> encoder tokens (B, N, D) at the decoder's width;
* ``cross.onnx``: encoder tokens -> cross-attention keys and values, (layers, B, heads, N, head_dim) each, once
  per image;
* ``decoder.onnx``: one step with past: token ids (R,), position (1,), past keys/values (layers, R, heads, T,
  head_dim), the rows' cross keys/values -> logits (R, V) and the keys/values with this position appended.

:class:`OnnxCaptionModel` implements the step protocol on top of them, so ``captionkit.decoding.generate`` (greedy,
beam, sampling) drives it unchanged. The graphs compute what :mod:`captionkit.models.gpt2_step` computes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from captionkit.errors import InputError, ModelLoadError
from captionkit.export import check_export_output, check_finite, keep_training_settings, load_source
from captionkit.export.onnx_files import GRAPHS, load_session, read_onnx_config
from captionkit.export.staging import staged_export
from captionkit.files import write_atomic
from captionkit.hub import resolve_model_source
from captionkit.images import PREPROCESSOR_CONFIG, Preprocessing
from captionkit.models.base import CaptionModel, Encoded
from captionkit.models.registry import family_of
from captionkit.parts import ONNX_CONFIG, refuse_export

OPSET = 17
# The one family the graphs cover: a ViT (or CLIP) encoder and a GPT-2 decoder with cross-attention.
ONNX_FAMILY = "vit-gpt2"


class _Encoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode(pixel_values).tokens


class _Cross(nn.Module):
    """Encoder tokens -> stacked per-layer cross-attention keys and values."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        config = decoder.config
        self.heads, self.width = config.n_head, config.n_embd

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, count = tokens.shape[0], tokens.shape[1]
        keys, values = [], []
        for block in self.decoder.transformer.h:
            key, value = block.crossattention.c_attn(tokens).split(self.width, dim=2)
            keys.append(key.reshape(images, count, self.heads, -1).transpose(1, 2))
            values.append(value.reshape(images, count, self.heads, -1).transpose(1, 2))
        return torch.stack(keys), torch.stack(values)


class _DecoderStep(nn.Module):
    """One GPT-2 step with past keys/values (concatenated, as ONNX graphs have no in-place cache)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.heads = decoder.config.n_head

    def forward(
        self,
        input_ids: torch.Tensor,
        position: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
        cross_keys: torch.Tensor,
        cross_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        transformer = self.decoder.transformer
        hidden = transformer.wte(input_ids) + transformer.wpe(position)  # (R, D) + (1, D)
        rows = hidden.shape[0]
        new_keys, new_values = [], []
        for layer, block in enumerate(transformer.h):
            attention = block.attn
            query, key, value = attention.c_attn(block.ln_1(hidden)).split(attention.split_size, dim=1)
            keys = torch.cat((past_keys[layer], key.reshape(rows, self.heads, 1, -1)), dim=2)
            values = torch.cat((past_values[layer], value.reshape(rows, self.heads, 1, -1)), dim=2)
            new_keys.append(keys)
            new_values.append(values)
            out = _attend(query.reshape(rows, self.heads, 1, -1), keys, values, attention.scaling)
            hidden = hidden + attention.c_proj(out.reshape(rows, -1))
            cross = block.crossattention
            query = cross.q_attn(block.ln_cross_attn(hidden)).reshape(rows, self.heads, 1, -1)
            out = _attend(query, cross_keys[layer], cross_values[layer], cross.scaling)
            hidden = hidden + cross.c_proj(out.reshape(rows, -1))
            hidden = hidden + block.mlp(block.ln_2(hidden))
        logits = self.decoder.lm_head(transformer.ln_f(hidden))
        return logits, torch.stack(new_keys), torch.stack(new_values)


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    weights = torch.softmax(torch.matmul(query, keys.transpose(-1, -2)) * scale, dim=-1)
    return torch.matmul(weights, values)


def export_onnx(source: str | Path, output: str | Path) -> dict[str, Any]:
    """Write the three graphs plus tokenizer, preprocessing and ``onnx_config.json`` into ``output``."""
    refuse_other_families(source)  # first: installing onnx would not help
    _require_onnx()
    parts = load_source(source)
    if not hasattr(parts.model, "ved"):
        raise ModelLoadError(source, _unsupported(parts.model.family))
    output = Path(output)
    check_export_output(parts.source, output, ONNX_CONFIG)
    # Graphs holding nan or inf weights were written without a word and decode nan log-probabilities.
    check_finite(parts.model, parts.source, "which would make its graphs decode nan")
    with staged_export(output, ONNX_CONFIG) as staging:
        parts.tokenizer.save(staging)
        parts.preprocessing.save(staging)
        keep_training_settings(parts.source, staging)
        return export_onnx_graphs(parts.model.cpu(), parts.preprocessing.size, staging)


def refuse_other_families(source: str | Path) -> None:
    """Refuse a model of a family the graphs do not cover by its config.json, before its weights load (a BLIP
    checkpoint's take gigabytes and minutes). An export is refused as the load would refuse it; a directory whose
    family cannot be read is left for the load to report."""
    directory = resolve_model_source(source)
    refuse_export(directory, source)
    try:
        family = family_of(directory)
    except ModelLoadError:
        return
    if family != ONNX_FAMILY:
        raise ModelLoadError(source, _unsupported(family))


def _unsupported(family: str) -> str:
    return f"is a {family} model; ONNX export supports {ONNX_FAMILY}"


def _require_onnx() -> None:
    """torch's exporter writes the graphs with the onnx package: without it, fail before anything is loaded or
    written (torch would fail after the tokenizer and preprocessing files, with a traceback)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise InputError("export onnx", "needs the onnx package (pip install 'captionkit[onnx]')") from None


def export_onnx_graphs(model: CaptionModel, size: tuple[int, int], output: Path) -> dict[str, Any]:
    """The graphs and ``onnx_config.json`` of a vit-gpt2 ``model`` taking ``size`` (height, width) pixels."""
    output.mkdir(parents=True, exist_ok=True)
    model.eval()
    decoder = model.ved.decoder
    config = decoder.config
    layers, heads, head_dim = config.n_layer, config.n_head, config.n_embd // config.n_head
    with torch.no_grad():
        pixels = torch.zeros(2, 3, *size)
        tokens = model.encode(pixels).tokens
        images = {0: "images"}
        axes = {"pixel_values": images, "tokens": images}
        _export(_Encoder(model), (pixels,), output / GRAPHS[0], ["pixel_values"], ["tokens"], axes)
        axes = {"tokens": images, "cross_keys": {1: "images"}, "cross_values": {1: "images"}}
        _export(_Cross(decoder), (tokens,), output / GRAPHS[1], ["tokens"], ["cross_keys", "cross_values"], axes)
        rows, past = 3, 2
        cross = torch.zeros(layers, rows, heads, tokens.shape[1], head_dim)
        example = (
            torch.zeros(rows, dtype=torch.long),
            torch.tensor([past]),
            torch.zeros(layers, rows, heads, past, head_dim),
            torch.zeros(layers, rows, heads, past, head_dim),
            cross,
            cross,
        )
        inputs = ["input_ids", "position", "past_keys", "past_values", "cross_keys", "cross_values"]
        cache, rows_only = {1: "rows", 3: "past"}, {1: "rows"}
        axes = {"input_ids": {0: "rows"}, "logits": {0: "rows"}, "past_keys": cache, "past_values": cache}
        axes |= {"cross_keys": rows_only, "cross_values": rows_only, "keys": {1: "rows", 3: "length"}}
        axes |= {"values": {1: "rows", 3: "length"}}
        _export(_DecoderStep(decoder), example, output / GRAPHS[2], inputs, ["logits", "keys", "values"], axes)
    info = {
        "family": model.family,
        "bos_token_id": model.bos_token_id,
        "eos_token_id": model.eos_token_id,
        "pad_token_id": model.pad_token_id,
        "vocab_size": model.vocab_size,
        "max_positions": model.max_positions,
        "layers": layers,
        "heads": heads,
        "head_dim": head_dim,
        "opset": OPSET,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
    }
    write_atomic((output / ONNX_CONFIG), json.dumps(info, indent=2) + "\n")
    return info


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    # The TorchScript exporter (deprecated since torch 2.9, still shipped): these graphs are plain tensor code with
    # fixed image sizes, which it traces well and fast. Its tracer warnings are about those fixed sizes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )


class OnnxCaptionModel(CaptionModel):
    """An ONNX export run by onnxruntime behind the step protocol (decoding only: no teacher forcing), with
    ``threads`` onnxruntime threads (None: as many as torch runs when the export loads)."""

    family: ClassVar[str] = "vit-gpt2-onnx"

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        super().__init__()
        directory = Path(directory)
        try:
            import onnxruntime
        except ImportError:
            raise ModelLoadError(directory, "needs onnxruntime (pip install 'captionkit[onnx]')") from None
        info = read_onnx_config(directory)
        self.bos_token_id, self.eos_token_id = info["bos_token_id"], info["eos_token_id"]
        self.pad_token_id, self.vocab_size = info["pad_token_id"], info["vocab_size"]
        self.max_positions = info["max_positions"]
        self.shape = (info["layers"], info["heads"], info["head_dim"])
        # The source model's parameter count (exports written before it was recorded: None).
        self.exported_parameters: int | None = info.get("parameters")
        options = onnxruntime.SessionOptions()
        # None: torch's thread count, so that one setting (--threads, torch.set_num_threads) holds for both engines.
        options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
        self.sessions = {name: load_session(directory, name, options, info) for name in GRAPHS}
        # Read once here (to check it) and handed to the loader, which reports it missing when it is None.
        self.preprocessing = _checked_preprocessing(directory, self.sessions[GRAPHS[0]])

    def encode(self, pixel_values: torch.Tensor) -> Encoded:
        (tokens,) = self.sessions["encoder.onnx"].run(None, {"pixel_values": _numpy(pixel_values)})
        return Encoded(torch.from_numpy(tokens))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("an ONNX export decodes only; train the PyTorch checkpoint")

    def init_state(self, encoded: Encoded) -> dict[str, Any]:
        keys, values = self.sessions["cross.onnx"].run(None, {"tokens": _numpy(encoded.tokens)})
        layers, heads, head_dim = self.shape
        rows = keys.shape[1]
        empty = np.zeros((layers, rows, heads, 0, head_dim), dtype=np.float32)
        # The rows' cross keys/values: regathered only when rows move to other images (not on beam reorders).
        return {
            "cross": (keys, values),
            "row_cross": (keys, values),
            "row_image": tuple(range(rows)),
            "keys": empty,
            "values": empty,
        }

    def step(self, tokens: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        length = state["keys"].shape[3]
        cross_keys, cross_values = state["row_cross"]
        logits, keys, values = self.sessions["decoder.onnx"].run(
            None,
            {
                "input_ids": _numpy(tokens).astype(np.int64),
                "position": np.array([length], dtype=np.int64),
                "past_keys": state["keys"],
                "past_values": state["values"],
                "cross_keys": cross_keys,
                "cross_values": cross_values,
            },
        )
        state["keys"], state["values"] = keys, values
        return torch.log_softmax(torch.from_numpy(logits).float(), dim=-1), state

    def reorder_state(self, state: dict[str, Any], index: torch.Tensor, row_image: tuple[int, ...]) -> dict[str, Any]:
        rows = _numpy(index)
        state["keys"], state["values"] = state["keys"][:, rows], state["values"][:, rows]
        if row_image != state["row_image"]:
            keys, values = state["cross"]
            images = np.asarray(row_image)
            state["row_cross"] = (keys[:, images], values[:, images])
            state["row_image"] = row_image
        return state

    def save_pretrained(self, directory: str | Path) -> None:
        raise NotImplementedError("copy the export directory instead")

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, *, dtype: torch.dtype | None = None) -> OnnxCaptionModel:
        raise NotImplementedError("an ONNX export loads through captionkit.loading.load_pretrained (fp32 only)")

    @classmethod
    def from_saved_config(cls, directory: Path) -> OnnxCaptionModel:
        raise NotImplementedError("an ONNX export holds its graphs, not a config to build from")


def _checked_preprocessing(directory: Path, encoder: Any) -> Preprocessing | None:
    """The export's preprocessing, checked to give the image size the encoder graph was traced at (its height and
    width are fixed). Without a preprocessing file there is nothing to compare (None): the loader reports it missing."""
    if not (directory / PREPROCESSOR_CONFIG).is_file():
        return None
    channels_height_width = tuple(encoder.get_inputs()[0].shape[1:])
    preprocessing = Preprocessing.load(directory)
    size = preprocessing.size
    if channels_height_width != (3, *size):
        taken = "x".join(map(str, channels_height_width[1:]))
        reason = f"takes {taken} images but the preprocessing gives {size[0]}x{size[1]}: a mismatched export"
        raise ModelLoadError(directory / GRAPHS[0], reason)
    return preprocessing


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()
