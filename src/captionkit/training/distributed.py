"""Data parallelism under ``torchrun`` / ``accelerate launch``: the few collective operations the loop needs.

Started by a launcher (``WORLD_SIZE`` > 1 in the environment), each process joins the group (gloo on CPU, nccl on
GPU), trains on its shard of every global batch, and DDP averages the gradients. Rank 0 alone evaluates, logs and
writes checkpoints. A single process needs none of this and gets the no-op version.

``train.batch_size`` is per process: one optimizer step sees ``batch_size * grad_accumulation * processes`` samples,
so N processes with batch_size B/N train like one with B. Examples::

    torchrun --nproc-per-node 2 -m captionkit.cli train RECIPE --output runs/x        # one machine
    accelerate launch --multi_gpu --num_processes 2 -m captionkit.cli train RECIPE --output runs/x
    # two machines, 8 GPUs each: run on both, with --node-rank 0 and 1
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr HOST0 --master-port 29500 \
        -m captionkit.cli train RECIPE --output /shared/runs/x

Checkpoints hold every process's RNG states, so a resumed run continues exactly; every node must see the run
directory (a shared filesystem). accelerate's ``--multi_gpu`` path is torchrun underneath (on a machine without
GPUs it runs on CPUs with gloo); its ``--cpu`` path starts one process unless MPI is configured.

Every process runs the same collectives in the same order: a micro-batch whose images are all unreadable on one
process runs a zero-weight placeholder there while the others train on theirs, and a stage that changes the trainable
parameters rebuilds DDP on every process at the same step (steps.py).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Train on the CPU even where a GPU is present (train.device=cpu): gloo, and CPU tensors throughout.
    cpu: bool = False
    # Whether this object started the process group (and so ends it in close()), not a caller before it.
    owns_group: bool = False
    # The group this object started, held until close() drops it last (see close()).
    group: Any = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def uses_cuda(self) -> bool:
        return not self.cpu and torch.cuda.is_available()

    @classmethod
    def from_env(cls, cpu: bool = False) -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(cpu=cpu)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        parallel = cls(rank, world_size, local_rank, cpu)
        if parallel.uses_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if parallel.uses_cuda else "gloo")
            parallel.owns_group = True
            parallel.group = dist.group.WORLD
        return parallel

    def device(self) -> torch.device:
        if self.uses_cuda:
            return torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        return torch.device("cpu")

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (float64)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all processes, left on its device (no host sync)."""
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        return bool(self.sum([float(flag)])[0]) if self.enabled else flag

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([float(flag)], device=self.device())
        dist.broadcast(tensor, 0)
        return bool(tensor.item())

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable, in memory only), in rank order, on every process."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """End the process group this object started, before the interpreter does: torch asks for it, and left to
        the exit, gloo's teardown can abort the process ("terminate called without an active exception").

        Call it once the DDP modules are gone. The group goes last, from this object's reference: torch frees a
        group through its Python object without holding the GIL, but through a DDP reducer (the last holder once
        the group is destroyed) with it held, and gloo's teardown joins its worker threads, one of which may be
        waiting for the GIL to free a tensor of the last collective: a deadlock, seen once in about ten 2-process
        CPU runs (the process never exited)."""
        if self.owns_group and dist.is_initialized():
            gc.collect()  # a DDP module in a reference cycle would otherwise free its reducer later, holding the GIL
            dist.destroy_process_group()
            self.owns_group = False
        self.group = None
