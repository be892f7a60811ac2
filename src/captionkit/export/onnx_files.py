"""Reading an ONNX export back, checked: ``onnx_config.json``'s settings and the three graphs' signatures.

A damaged or mismatched export (a setting of the wrong type, a graph cut short, one graph copied over another, a
config edited to other sizes) is one :class:`ModelLoadError` naming the file, raised at load, not a library's
traceback from the middle of decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from captionkit.errors import ModelLoadError, first_line
from captionkit.jsontext import parse_json
from captionkit.parts import ONNX_CONFIG

GRAPHS = ("encoder.onnx", "cross.onnx", "decoder.onnx")
# Each graph's input and output names, in order, as export_onnx_graphs writes them.
SIGNATURES = {
    "encoder.onnx": (("pixel_values",), ("tokens",)),
    "cross.onnx": (("tokens",), ("cross_keys", "cross_values")),
    "decoder.onnx": (
        ("input_ids", "position", "past_keys", "past_values", "cross_keys", "cross_values"),
        ("logits", "keys", "values"),
    ),
}
# Settings that must be whole numbers, with their least value.
SETTINGS = {
    "bos_token_id": 0,
    "eos_token_id": 0,
    "pad_token_id": 0,
    "vocab_size": 1,
    "max_positions": 1,
    "layers": 1,
    "heads": 1,
    "head_dim": 1,
}
# Written since exports record the source model's parameter count; older exports lack it.
OPTIONAL_SETTINGS = {"parameters": 0}


def read_onnx_config(directory: Path) -> dict[str, Any]:
    """``directory``'s ``onnx_config.json``, every setting present and a whole number in range."""
    path = directory / ONNX_CONFIG
    if not path.is_file():
        raise ModelLoadError(directory, f"no {ONNX_CONFIG}: not an ONNX export (captionkit export onnx)")
    try:
        info = parse_json(path.read_text(encoding="utf-8"), path, error=ModelLoadError)
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(path, f"unreadable ONNX export settings ({first_line(error)})") from None
    if not isinstance(info, dict):
        raise ModelLoadError(path, "unreadable ONNX export settings (not a JSON object)")
    for name, least in (SETTINGS | OPTIONAL_SETTINGS).items():
        if name not in info:
            if name in OPTIONAL_SETTINGS:
                continue
            raise ModelLoadError(path, f"unreadable ONNX export settings ({name!r})")
        value = info[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ModelLoadError(path, f"{name}: must be a whole number >= {least}, got {value!r}")
    return info


def check_graph(path: Path, session: Any, info: dict[str, Any]) -> None:
    """``session`` (the onnxruntime session of graph ``path``) takes and gives what its name's graph does, at the
    sizes ``info`` (the export's settings) says."""
    inputs, outputs = SIGNATURES[path.name]
    found = (tuple(a.name for a in session.get_inputs()), tuple(a.name for a in session.get_outputs()))
    if found != (inputs, outputs):
        wanted = f"({', '.join(inputs)}) -> ({', '.join(outputs)})"
        got = f"({', '.join(found[0])}) -> ({', '.join(found[1])})"
        raise ModelLoadError(path, f"not the {path.stem} graph of an ONNX export: it maps {got}, expected {wanted}")
    cache = {0: info["layers"], 2: info["heads"], 4: info["head_dim"]}
    sizes = {name: cache for name in ("cross_keys", "cross_values", "past_keys", "past_values", "keys", "values")}
    sizes["logits"] = {1: info["vocab_size"]}
    for argument in (*session.get_inputs(), *session.get_outputs()):
        for axis, size in sizes.get(argument.name, {}).items():
            dim = argument.shape[axis] if axis < len(argument.shape) else None
            if isinstance(dim, int) and dim != size:
                reason = f"{argument.name} has {dim} on axis {axis} where {ONNX_CONFIG} says {size}"
                raise ModelLoadError(path, f"{reason}: a mismatched export")


def load_session(directory: Path, name: str, options: Any, info: dict[str, Any]) -> Any:
    """The checked onnxruntime session of graph ``name`` in ``directory`` (CPU)."""
    import onnxruntime

    path = directory / name
    if not path.is_file():
        raise ModelLoadError(directory, f"missing {name}")
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception alone.
    except Exception as error:
        raise ModelLoadError(path, f"unreadable ONNX graph ({first_line(error)})") from None
    check_graph(path, session, info)
    return session
