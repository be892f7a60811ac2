"""One process of a data-parallel training run that keeps its own weights: the DDP tests' subject.

Usage: python tests/_ddp_child.py OUTPUT MISSING key=value...  (under torchrun; MISSING: comma-separated indices of
training records whose image is replaced by a missing file, or - for none). Each process writes
OUTPUT/rank{RANK}.safetensors, its parameters after the run. A collective that waits over 60 s (a process that
skipped it) fails the run instead of hanging it.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from captionkit.config import load_train_config
from captionkit.data.records import CaptionRecord
from captionkit.training.loop import train
from captionkit.training.setup import build_setup, seed_everything


def main() -> None:
    output, missing, *assignments = sys.argv[1:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # the trainer joins this group
    config = load_train_config(None, assignments)
    seed_everything(config.train.seed)  # every process builds the same model (DDP would copy rank 0's anyway)
    setup = build_setup(config)
    break_records(setup.train_records, missing, Path(output))
    train(config, output, setup=setup)
    weights = {name: p.detach().contiguous() for name, p in setup.model.named_parameters()}
    save_file(weights, str(Path(output) / f"rank{os.environ['RANK']}.safetensors"))
    dist.destroy_process_group()  # this process started the group: it ends it, not the interpreter's exit


def break_records(records: list[CaptionRecord], missing: str, directory: Path) -> None:
    """Point the records at ``missing`` (indices) to image files that do not exist."""
    for index in [] if missing == "-" else [int(i) for i in missing.split(",")]:
        record = records[index]
        records[index] = CaptionRecord(directory / f"missing{index}.png", record.caption, image_id=f"missing{index}")


if __name__ == "__main__":
    main()
