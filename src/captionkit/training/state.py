"""What a resumed run needs besides the weights, split into JSON and tensors (safetensors): never a pickle.

* RNG states: Python's, NumPy's (JSON) and torch's CPU and CUDA generators (tensors);
* the optimizer: its parameter groups and scalar state (JSON) and its moment tensors (``optimizer.{i}.{key}``); a
  resumed run takes the groups' settings (weight decay, betas) from its own config.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

OPTIMIZER_PREFIX = "optimizer."
RNG_PREFIX = "rng."


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }
    tensors = {f"{RNG_PREFIX}torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{RNG_PREFIX}cuda.{index}"] = state
    return plain, tensors


def restore_rng(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensors[f"{RNG_PREFIX}torch"])
    cuda = sorted(key for key in tensors if key.startswith(f"{RNG_PREFIX}cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[key] for key in cuda])


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, plain: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(OPTIMIZER_PREFIX):
            index, key = name[len(OPTIMIZER_PREFIX) :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for name, value in plain["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    # The saved groups give which parameters each holds; the settings are this run's (weight decay, betas, fused on
    # its device): a run resumed with changed ones (--resume) trains with them, as it does with a changed lr.
    groups = [
        saved | {key: value for key, value in group.items() if key != "params"}
        for saved, group in zip(plain["param_groups"], optimizer.param_groups, strict=True)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
