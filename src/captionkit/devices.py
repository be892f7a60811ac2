"""Which torch device a captioner runs on: a name checked against this machine before any weights move."""

from __future__ import annotations

import torch

from captionkit.errors import InputError

KNOWN = "cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None, source: str = "device") -> torch.device:
    """``name`` as a torch device (None: the GPU when there is one, else the CPU).

    An ``InputError`` naming ``source`` for a name torch does not parse, or a device this machine does not have:
    torch itself would fail later, on the first tensor moved there, with an assertion or a long traceback.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(source, f"unknown device {str(name)!r} (expected {KNOWN})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(source, f"{name}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(source, f"{name}: this machine has {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(source, f"{name}: no MPS (Apple GPU) device is available")
    elif device.type != "cpu":
        raise InputError(source, f"{name}: captionkit runs on {KNOWN}")
    return device
