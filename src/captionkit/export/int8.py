"""int8 dynamic quantization of a captioner's linear layers (GPT-2's Conv1D converted to ``nn.Linear`` first).

Weights are quantized per output channel, activations per token at run time (dynamic quantization). Two backends:

* ``torch.ao`` (default): ``torch.ao.quantization.quantize_dynamic``, deprecated but shipped with torch, with fused
  fbgemm int8 kernels. Measured here (AMD EPYC, AVX2 without VNNI, 2 threads): ViT-B/16 + GPT-2 base 1.9x faster
  than fp32; a 0.7M-parameter model about 1.2x;
* ``torchao`` (``--backend torchao``, extra ``int8``): its maintained successor. torchao 0.18 installs cleanly
  beside torch 2.13, but its ``Int8DynamicActivationInt8WeightConfig`` measured 20x slower than fp32 on this CPU
  (no fused CPU kernel), and once installed transformers imports it in every process (seconds, warnings).

The output head (tied to the token embedding) is not an int8 layer: with torch.ao the embedding tables, and so the
tied head, are rounded to int8 values per row and used in float. An exported directory is the checkpoint's config,
tokenizer and preprocessing files plus ``quantization.json``, whose ``storage`` says where the weights are:

* ``int8`` (torch.ao): ``model.int8.safetensors`` (:mod:`captionkit.export.int8_weights`), the int8 layers and the
  embedding tables as int8 with their scales (about a quarter of the fp32 file); a load builds the model from its
  config, the int8 layers and the tables from the stored values, so it computes exactly what the quantized model
  computed at export;
* ``fp32`` (torchao, and every export written before int8 storage): the fp32 ``model.safetensors``, quantized again
  on each load.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captionkit.errors import InputError, ModelLoadError
from captionkit.export import check_export_output, check_finite, keep_training_settings, load_source
from captionkit.export.int8_weights import INT8_WEIGHTS_FILE, load_int8_weights, round_embeddings, save_int8_weights
from captionkit.export.staging import staged_export
from captionkit.files import honour_umask, write_atomic
from captionkit.jsontext import parse_json
from captionkit.models.base import CaptionModel
from captionkit.models.native import WEIGHTS_FILE
from captionkit.models.registry import family_of, get_family, load_model
from captionkit.parts import QUANTIZATION_FILE

METHOD = "int8-dynamic"
BACKENDS = ("torch.ao", "torchao")
DEFAULT_BACKEND = "torch.ao"
# Left in fp32, with every linear layer whose weight is tied to another parameter: the output head, which shares
# its weight with the token embedding (GPT-2's lm_head, BLIP's cls.predictions.decoder).
KEEP_FP32 = ("lm_head",)
# Where an export's weights are (quantization.json's "storage"): int8 values, or fp32 quantized on load.
STORAGES = ("int8", "fp32")


def torchao_installed() -> bool:
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return False
    return True


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every transformers ``Conv1D`` (x @ W + b, W stored (in, out)) by the equal ``nn.Linear``."""
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                weight = child.weight
                linear = nn.Linear(weight.shape[0], weight.shape[1], device=weight.device, dtype=weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
                replaced += 1
    return replaced


def quantize_int8(model: nn.Module, backend: str | None = None) -> dict[str, Any]:
    """Quantize ``model``'s linear layers in place (CPU, eval); returns what was done, for quantization.json."""
    backend = check_backend(backend)
    model.cpu().eval()
    conv1d_to_linear(model)
    # Exactly nn.Linear: subclasses such as attention's NonDynamicallyQuantizableLinear are used by their weights.
    linears = {name: module for name, module in model.named_modules() if type(module) is nn.Linear}
    uses = Counter(id(parameter) for _, parameter in model.named_parameters(remove_duplicate=False))
    in_torch_layers = _torch_transformer_linears(model)
    names = [
        name
        for name, linear in linears.items()
        if uses[id(linear.weight)] == 1 and name.rsplit(".", 1)[-1] not in KEEP_FP32 and name not in in_torch_layers
    ]
    if backend == "torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda _, name: name in names)
    else:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():  # its deprecation notice: we say so in quantization.json instead
            warnings.simplefilter("ignore")
            quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, inplace=True)
    # The embedding tables (and so a head tied to the token table) are rounded to int8 per row where the export
    # stores int8 (torch.ao): the model then computes what a loaded export computes.
    tables = round_embeddings(model) if backend == "torch.ao" else []
    note = (
        "torch.ao.quantization is deprecated; its successor torchao measured far slower on CPU"
        if backend == "torch.ao"
        else ""
    )
    kept = [name for name in linears if name not in names]
    return {
        "method": METHOD,
        "backend": backend,
        "layers": len(names),
        "embeddings": tables,
        "kept_fp32": kept,
        "note": note,
    }


def _torch_transformer_linears(model: nn.Module) -> set[str]:
    """The feed-forward linears of torch's own transformer layers (prefix-gpt2's ``prefix_layers`` and the mappers
    of models saved with ``mapper_style: torch``), kept in fp32: in eval mode such a layer's fast path reads
    ``linear1.weight`` as a tensor, which a quantized linear has as a method (an AttributeError on every caption)."""
    layers = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    return {
        f"{name}.{child}"
        for name, module in model.named_modules()
        if isinstance(module, layers)
        for child, linear in module.named_children()
        if type(linear) is nn.Linear
    }


# Why an int8 export refuses nan or inf weights: a scale taken from such a row is nan or inf (the export wrote a file
# that failed to load, or a token's row of whole numbers).
INT8_REASON = "which int8 cannot represent"


def check_backend(backend: str | None) -> str:
    """``backend`` (None: the default) if it is known and installed; else an ``InputError`` saying which."""
    backend = backend or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise InputError("backend", f"unknown int8 backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "torchao" and not torchao_installed():
        raise InputError("backend", "torchao is not installed (pip install 'captionkit[int8]')")
    return backend


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, those packed in torch.ao's int8 linear layers included (``parameters()`` skips
    them: they are not ``nn.Parameter``); for an ONNX export, whose weights live in its graphs, the count of the
    model it was exported from."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    exported = getattr(model, "exported_parameters", None)
    if exported is not None:
        return int(exported)
    total = sum(parameter.numel() for parameter in model.parameters())
    for module in model.modules():
        if isinstance(module, DynamicInt8Linear):
            weight, bias = module._weight_bias()
            total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total


def write_quantization_file(directory: Path, info: dict[str, Any]) -> None:
    write_atomic((directory / QUANTIZATION_FILE), json.dumps(info, indent=2) + "\n")


def is_quantized(directory: str | Path) -> bool:
    return (Path(directory) / QUANTIZATION_FILE).is_file()


def load_int8_model(directory: Path) -> CaptionModel:
    """The int8 model an export directory holds, as its ``quantization.json`` says."""
    info = read_quantization_file(directory)
    if info["storage"] == "int8":
        model = get_family(family_of(directory)).load_class().from_saved_config(directory)
        conv1d_to_linear(model)
        load_int8_weights(model, directory / INT8_WEIGHTS_FILE)
        return model
    model = load_model(directory)
    check_finite(model, directory, INT8_REASON, ModelLoadError)
    # torchao is an optional extra; without it, torch.ao quantizes with the same int8 scheme.
    backend = info["backend"]
    quantize_int8(model, "torch.ao" if backend == "torchao" and not torchao_installed() else backend)
    return model


def read_quantization_file(directory: Path) -> dict[str, Any]:
    """``quantization.json``, checked; an export written before int8 storage has no "storage" (it is fp32)."""
    path = directory / QUANTIZATION_FILE
    try:
        info = parse_json(path.read_text(encoding="utf-8"), path, error=ModelLoadError)
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(path, f"unreadable quantization file: {error}") from None
    if not isinstance(info, dict) or info.get("method") != METHOD:
        raise ModelLoadError(path, f"unknown quantization method (expected {METHOD!r})")
    if info.get("backend") not in BACKENDS:
        raise ModelLoadError(path, f"unknown int8 backend {info.get('backend')!r} (known: {', '.join(BACKENDS)})")
    info.setdefault("storage", "fp32")
    if info["storage"] not in STORAGES:
        raise ModelLoadError(path, f"unknown storage {info['storage']!r} (known: {', '.join(STORAGES)})")
    return info


def export_int8(source: str | Path, output: str | Path, backend: str | None = None) -> dict[str, Any]:
    """Write ``source``'s checkpoint to ``output`` as an int8 export; returns the quantization info.

    With torch.ao the quantized layers are stored as int8 (the fp32 weights file is not kept); with torchao the fp32
    weights stay, for the loader to quantize.
    """

    backend = check_backend(backend)
    output = Path(output)
    parts = load_source(source)
    check_export_output(parts.source, output, QUANTIZATION_FILE)
    check_finite(parts.model, parts.source, INT8_REASON)
    # Staged: stopped after the fp32 save, the directory would load as the fp32 model.
    with staged_export(output, QUANTIZATION_FILE) as staging:
        parts.save(staging)
        keep_training_settings(parts.source, staging)
        info = quantize_int8(parts.model, backend)
        # torchao's quantized tensors are not stored here: its exports keep the fp32 weights and quantize on load.
        info["storage"] = "int8" if backend == "torch.ao" else "fp32"
        if info["storage"] == "int8":
            save_int8_weights(parts.model, staging / INT8_WEIGHTS_FILE)
            (staging / WEIGHTS_FILE).unlink()
            honour_umask(staging)  # safetensors wrote the int8 weights through a private (0600) temporary file
        write_quantization_file(staging, info)
    return info
