"""int8 dynamic quantization of a captioner's linear layers (GPT-2's Conv1D converted to ``nn.Linear`` first).

Weights are quantized per output channel, activations per token at run time (dynamic quantization). Two backends:

* ``torch.ao`` (default): ``torch.ao.quantization.quantize_dynamic``, deprecated but shipped with torch, with fused
  fbgemm int8 kernels. Measured here (AMD EPYC, AVX2 without VNNI, 2 threads): ViT-B/16 + GPT-2 base 1.9x faster
  than fp32; a 0.7M-parameter model about 1.2x;
* ``torchao`` (``--backend torchao``, extra ``int8``): its maintained successor. torchao 0.18 installs cleanly
  beside torch 2.13, but its ``Int8DynamicActivationInt8WeightConfig`` measured 20x slower than fp32 on this CPU
  (no fused CPU kernel), and once installed transformers imports it in every process (seconds, warnings).

The output head (tied to the token embedding) stays fp32. An exported directory is the fp32 checkpoint plus
``quantization.json``; loading it (``Captioner.from_pretrained``) quantizes the model the same way, so any loader of
the checkpoint gets the fp32 model and captionkit the int8 one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from captionkit.errors import InputError, ModelLoadError
from captionkit.files import write_atomic
from captionkit.jsontext import parse_json

QUANTIZATION_FILE = "quantization.json"
METHOD = "int8-dynamic"
BACKENDS = ("torch.ao", "torchao")
DEFAULT_BACKEND = "torch.ao"
# Left in fp32: the output head shares its weight with the token embedding.
KEEP_FP32 = ("lm_head",)


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
    backend = _check_backend(backend)
    model.cpu().eval()
    conv1d_to_linear(model)
    names = [name for name, module in model.named_modules() if _quantizable(module, name)]
    if backend == "torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=_quantizable)
    else:
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():  # its deprecation notice: we say so in quantization.json instead
            warnings.simplefilter("ignore")
            quantize_dynamic(model, {name: default_dynamic_qconfig for name in names}, inplace=True)
    note = (
        "torch.ao.quantization is deprecated; its successor torchao measured far slower on CPU"
        if backend == "torch.ao"
        else ""
    )
    return {"method": METHOD, "backend": backend, "layers": len(names), "kept_fp32": list(KEEP_FP32), "note": note}


def _check_backend(backend: str | None) -> str:
    backend = backend or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise InputError("backend", f"unknown int8 backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "torchao" and not torchao_installed():
        raise InputError("backend", "torchao is not installed (pip install 'captionkit[int8]')")
    return backend


def _quantizable(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in KEEP_FP32


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, those packed in torch.ao's int8 linear layers included (``parameters()`` skips
    them: they are not ``nn.Parameter``)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

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


def apply_saved_quantization(model: nn.Module, directory: str | Path) -> nn.Module:
    """If ``directory`` holds ``quantization.json``, quantize ``model`` as it says; else return it unchanged."""
    path = Path(directory) / QUANTIZATION_FILE
    if not path.is_file():
        return model
    try:
        info = parse_json(path.read_text(encoding="utf-8"), path, error=ModelLoadError)
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(path, f"unreadable quantization file: {error}") from None
    if not isinstance(info, dict) or info.get("method") != METHOD:
        raise ModelLoadError(path, f"unknown quantization method (expected {METHOD!r})")
    backend = info.get("backend")
    if backend == "torchao" and not torchao_installed():
        backend = "torch.ao"  # the same int8 scheme; torchao is an optional extra
    if backend not in BACKENDS:
        raise ModelLoadError(path, f"unknown int8 backend {backend!r} (known: {', '.join(BACKENDS)})")
    quantize_int8(model, backend)
    return model


def export_int8(source: str | Path, output: str | Path, backend: str | None = None) -> dict[str, Any]:
    """Write ``source``'s checkpoint to ``output`` with ``quantization.json``; returns the quantization info.

    The model is quantized once here too, so that a model the backend cannot quantize fails now, not at load.
    """
    from captionkit.parts import CaptionerParts

    backend = _check_backend(backend)
    if is_quantized(source):
        raise ModelLoadError(source, "is already an int8 export")
    parts = CaptionerParts.load(source)
    parts.save(output)
    info = quantize_int8(parts.model, backend)
    write_quantization_file(output, info)
    return info
