"""Split a captioning job into N disjoint shards, by hand (``--shard K/N``) or from torchrun's environment.

An input belongs to shard ``blake2b(key) mod N``, where the key is the image's path relative to the input it came
from (see :class:`captionkit.jobs.inputs.InputImage`): the same on every run and every machine, whatever the other
inputs, and independent of Python's per-process ``hash()`` salt. Each shard writes its own output part,
``OUTPUT`` with ``.part-K-of-N`` inserted before the suffix (``captions.jsonl`` -> ``captions.part-0-of-8.jsonl``);
``captionkit merge`` joins the parts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from captionkit.errors import InputError

_PART = re.compile(r"\.part-(\d+)-of-(\d+)(\.[^.]*)?$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError("--shard", f"expected K/N with 0 <= K < N, got {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    def part_path(self, output: Path) -> Path:
        """``dir/name.part-K-of-N.ext`` for ``dir/name.ext`` (the suffix is kept so the format stays visible)."""
        return output.with_name(f"{output.stem}.part-{self.index}-of-{self.count}{output.suffix}")


def shard_of(key: str, count: int) -> int:
    """The shard (0 .. count-1) that owns ``key``: a 64-bit BLAKE2b digest of its UTF-8 bytes, mod ``count``."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> ``Shard(K, N)``; anything else is an :class:`InputError` naming ``--shard``."""
    index, slash, count = text.partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise InputError("--shard", f"expected K/N (for example 0/4), got {text!r}")
    return Shard(int(index), int(count))


@dataclass(frozen=True)
class DistributedEnv:
    """What torchrun tells each process: its global rank, the world size and its rank on this node."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def distributed_env(env: Mapping[str, str]) -> DistributedEnv | None:
    """torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (``LOCAL_WORLD_SIZE``) from ``env``; None outside torchrun."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world_size = int(env.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        raise InputError("RANK/WORLD_SIZE", "torchrun's environment variables must be integers") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError("RANK/WORLD_SIZE", f"rank {rank} is not within a world of {world_size}")
    return DistributedEnv(rank, world_size, local_rank, max(1, local_world_size))


def part_of(path: Path) -> Shard | None:
    """The shard a part file's name says it holds (``x.part-2-of-4.jsonl`` -> 2/4); None for other names."""
    found = _PART.search(Path(path).name)
    if found is None:
        return None
    index, count = int(found.group(1)), int(found.group(2))
    return Shard(index, count) if 0 <= index < count else None


def choose_shard(text: str | None, dist: DistributedEnv | None) -> Shard | None:
    """--shard K/N, torchrun's RANK/WORLD_SIZE, or both; None when the run is not split (N = 1 included).

    Both: shard K is split among the W ranks, as shard K*W + RANK of N*W. Each node of a multi-node job can
    then run its own torchrun with --shard NODE/NODES, with no rendezvous between nodes.
    """
    outer = parse_shard(text) if text is not None else Shard(0, 1)
    if dist is not None:
        outer = Shard(outer.index * dist.world_size + dist.rank, outer.count * dist.world_size)
    return outer if outer.count > 1 else None


def choose_device(device: str | None, dist: DistributedEnv | None, model: str | Path | None = None) -> str | None:
    """Under torchrun, each process on a node takes its own GPU (cuda:LOCAL_RANK) unless told otherwise, or unless
    ``model`` is an int8 or ONNX export (which runs on the CPU)."""
    import torch

    from captionkit.export import is_export_dir

    exported = model is not None and is_export_dir(model)
    if dist is None or device not in (None, "cuda") or not torch.cuda.is_available() or exported:
        return device
    return f"cuda:{dist.local_rank % torch.cuda.device_count()}"
