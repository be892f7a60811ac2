"""Member paths (``CONTAINER/MEMBER``) and the samples of containers, read one container at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from captionkit.shards.parquet import parquet_index, read_parquet_member
from captionkit.shards.patterns import CONTAINER_SUFFIXES
from captionkit.shards.tar import read_tar_member, sample_captions, tar_index


@dataclass(frozen=True)
class ShardSample:
    """A sample of a collection: its key, its image as a member path, its captions, and what is wrong with it (if
    anything), naming its container: a text member that could not be read, a cut through it. A ``damaged`` one is no
    sample but damage to its shard (a torn or garbage stretch), named ``SHARD/@OFFSET``: ``problem`` says what, and
    reading its image raises that."""

    key: str
    image: Path
    captions: tuple[str, ...]
    problem: str | None = None
    damaged: bool = False


def split_member(path: Path) -> tuple[Path, str] | None:
    """``(container, member)`` when ``path`` lies inside a ``.tar``/``.parquet`` file, else ``None``."""
    for parent in path.parents:
        if parent.suffix.lower() in CONTAINER_SUFFIXES and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


def is_files_layout_image(path: Path) -> bool:
    """An image of img2dataset's "files" layout: in a numbered folder, beside its ``KEY.json`` sidecar. One in a
    folder whose files cannot be looked at (no search permission) is none: it is named by its path."""
    if not path.parent.name.isdigit():
        return False
    try:
        return path.with_suffix(".json").is_file()
    except OSError:
        return False


def sample_key(image: str) -> str:
    """The key of a sample named by a member path (``shards/00000.tar/000000017.jpg`` -> ``000000017``) or of an
    image in img2dataset's "files" layout (``files/00000/000000017.jpg`` -> ``000000017``); any other image is its
    own key."""
    found = split_member(Path(image))
    if found is None:
        return Path(image).stem if is_files_layout_image(Path(image)) else image
    member = found[1]
    return member.rsplit(".", 1)[0] if found[0].suffix.lower() == ".tar" else member


def container_runs(paths: Iterable[Path]) -> list[int] | None:
    """Lengths of the runs of consecutive ``paths`` inside the same container (a loose file is a run of its own);
    ``None`` when no path lies inside a container."""
    runs: list[int] = []
    previous: Path | None = None
    inside = False
    for path in paths:
        found = split_member(path)
        container = found[0] if found is not None else None
        inside = inside or container is not None
        if container is not None and container == previous:
            runs[-1] += 1
        else:
            runs.append(1)
        previous = container
    return runs if inside else None


def read_member(path: Path, limit: int) -> bytes | None:
    """The bytes of the member ``path`` names (at most ``limit + 1``); ``None`` when it is not a member path."""
    found = split_member(path)
    if found is None:
        return None
    container, member = found
    if container.suffix.lower() == ".tar":
        return read_tar_member(container, member, limit)
    return read_parquet_member(container, member, limit)


def iter_samples(containers: Iterable[Path]) -> Iterator[ShardSample]:
    """The samples of ``containers`` in order; only the containers being read keep their index in memory. Tar
    samples without an image are skipped, and so are Parquet rows without image bytes (img2dataset's failed
    downloads, which its index counts); damage to a tar comes where it was found, as a ``damaged`` sample."""
    for container in containers:
        yield from _tar_samples(container) if container.suffix.lower() == ".tar" else _rows(container)


def _tar_samples(container: Path) -> Iterator[ShardSample]:
    for sample in tar_index(container).samples:
        if sample.image is not None:
            captions = tuple(sample_captions(sample.captions, sample.meta))
            problem = f"{container}: {sample.problem}" if sample.problem is not None else None
            yield ShardSample(sample.key, container / sample.image, captions, problem, sample.damaged)


def _rows(container: Path) -> Iterator[ShardSample]:
    """The rows with image bytes as samples; a key that repeats is its first such row only: its member path reads
    that row's image, so a later row's caption would be paired with another row's image."""
    index = parquet_index(container)
    met: set[str] = set()
    repeated = f"{container}: a row whose key repeats an earlier row's (left out: the key names the first row's image)"
    for position, (key, caption) in enumerate(zip(index.keys, index.captions, strict=True)):
        if position in index.imageless:  # a failed download: nothing to caption or train on (the index counts it)
            continue
        if key in met:  # counted by the readers, its captions with it
            yield ShardSample(key, container / key, (), problem=repeated)
            continue
        met.add(key)
        # A caption column may hold a list of captions per row (Hugging Face datasets), read as a .json's would be.
        yield ShardSample(key, container / key, tuple(sample_captions((), {"caption": caption})))
