"""Web-scale collections as img2dataset writes them: WebDataset tar shards and Parquet files with image bytes.

A sample inside a container is named by a *member path*: the container's path joined with the member, e.g.
``shards/00000.tar/000000017.jpg`` or ``laion/part-0.parquet/000000017``. :func:`read_member` gives its bytes (what
:func:`captionkit.images.load_image` calls for a path that is not a file), :func:`container_files` expands what a
user typed (a container, a brace pattern ``shards/{00000..00099}.tar`` or a directory of containers), and
:func:`iter_samples` walks the samples of containers one at a time, so memory does not grow with their number.
"""

from captionkit.shards.members import (
    ShardSample,
    container_runs,
    is_files_layout_image,
    iter_samples,
    read_member,
    sample_key,
    split_member,
)
from captionkit.shards.patterns import CONTAINER_SUFFIXES, container_files, directory_containers, is_container_input
from captionkit.shards.tar import sample_captions

__all__ = [
    "CONTAINER_SUFFIXES",
    "ShardSample",
    "container_files",
    "container_runs",
    "directory_containers",
    "is_container_input",
    "is_files_layout_image",
    "iter_samples",
    "read_member",
    "sample_captions",
    "sample_key",
    "split_member",
]
