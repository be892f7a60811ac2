"""A training run in a child process that signals itself at a chosen step: the crash tests' subject.

Usage: python tests/_train_child.py SIGNAL STEP OUTPUT key=value...  (SIGNAL: KILL or TERM; STEP 0: never)
Prints the result as one JSON line when the run returns.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch
import torch.distributed as dist

from captionkit.config import load_train_config
from captionkit.training.loop import train


def main() -> None:
    name, at_step, output, *assignments = sys.argv[1:]
    torch.set_num_threads(1)
    config = load_train_config(None, assignments)

    def log(entry: dict) -> None:
        if entry["step"] == int(at_step):
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))

    result = train(config, output, log=log)
    # train() ends the process group it started (under torchrun), before this process exits.
    print(json.dumps({"steps": result.steps, "interrupted": result.interrupted, "group": dist.is_initialized()}))


if __name__ == "__main__":
    main()
