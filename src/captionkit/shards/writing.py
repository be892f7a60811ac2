"""Write samples in img2dataset's layouts: WebDataset tar shards (``KEY.jpg``, ``KEY.txt``, ``KEY.json``) and
Parquet (``key``, ``caption``, ``jpg`` columns). Used to build collections for tests and benchmarks."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from captionkit.errors import InputError
from captionkit.shards.parquet import INSTALL


@dataclass(frozen=True)
class Sample:
    key: str
    image: bytes
    caption: str


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_webdataset(samples: Sequence[Sample], directory: Path, per_shard: int) -> list[Path]:
    """Shards ``00000.tar, 00001.tar, ...`` of ``per_shard`` samples each, in order."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, len(samples), per_shard)):
        shard = directory / f"{number:05d}.tar"
        with tarfile.open(shard, "w") as archive:
            for sample in samples[start : start + per_shard]:
                _add(archive, f"{sample.key}.jpg", sample.image)
                _add(archive, f"{sample.key}.txt", sample.caption.encode())
                _add(archive, f"{sample.key}.json", json.dumps({"key": sample.key, "caption": sample.caption}).encode())
        shards.append(shard)
    return shards


def write_parquet(samples: Iterable[Sample], path: Path, row_group_size: int = 1000) -> Path:
    """One Parquet file with ``key``, ``caption`` and ``jpg`` columns."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(path, INSTALL) from None
    rows = [{"key": s.key, "caption": s.caption, "jpg": s.image} for s in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as sink:  # opened by Python: pyarrow fails on a file name that is not UTF-8
        pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=row_group_size)
    return path
