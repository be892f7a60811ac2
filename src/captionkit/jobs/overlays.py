"""Attention overlays beside a batch job's records: DIR/<folder of the image>/<NNN>-<token>.png.

Folder names come from image file names, which a user (or whoever named the files) controls, so they are made
safe before they touch the file system: whatever the name (``..``, ``.``, separators, NUL, a very long name), the
folder is a direct child of DIR, and two images never share one. ``DIR/index.jsonl``
(:mod:`captionkit.jobs.overlay_index`) says which folder is whose, and keeps a folder its image's in later runs.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from captionkit.api import Captioner
from captionkit.attention import write_overlays
from captionkit.decoding import Caption, DecodingConfig
from captionkit.errors import CaptionkitError
from captionkit.jobs.overlay_index import INDEX_NAME, append_entries, drop_unfinished_line

# Characters kept in a folder name; anything else (separators, NUL, controls, ...) becomes "_".
UNSAFE_CHARACTERS = re.compile(r"[^\w.+=@,-]")
# File systems allow 255 bytes a name; room is left for the "-NN" that tells same-named images apart.
MAX_FOLDER_BYTES = 200


def safe_folder_name(stem: str) -> str:
    """``stem`` as one plain folder name: no separator or control character, never ``.``/``..``/hidden/empty,
    at most :data:`MAX_FOLDER_BYTES` bytes once encoded for the file system."""
    name = UNSAFE_CHARACTERS.sub("_", stem)
    if not name.strip("."):
        name = "_" * len(name) or "image"
    elif name.startswith("."):
        name = "_" + name
    while len(os.fsencode(name)) > MAX_FOLDER_BYTES:
        name = name[:-1]
    return name


def overlay_folders(paths: Iterable[Path], indexed: Mapping[str, str] | None = None) -> dict[Path, str]:
    """Each input's overlay folder name. An image ``indexed`` (``{image: folder}``, an earlier run's index) keeps its
    folder; any other gets its stem made safe, or, where that is taken (ignoring case) by an indexed folder or an
    earlier input, ``name-2``, ``name-3``, ... in input order. Made from the whole input list, which every shard,
    torchrun rank and resumed run sees alike, so no two of them give one name to different images: with the same
    inputs, an index holding some of the images gives the others the names they get without one."""
    indexed = indexed or {}
    folders: dict[Path, str] = {}
    # Case-insensitive file systems would give Dog and dog one folder; the index file is no folder to take.
    taken = {INDEX_NAME.casefold(), *(folder.casefold() for folder in indexed.values())}
    for path in paths:
        if path in folders:
            continue
        folder = indexed.get(str(path))
        if folder is None:
            folder = _free_name(safe_folder_name(path.stem), taken)
            taken.add(folder.casefold())
        folders[path] = folder
    return folders


def _free_name(base: str, taken: set[str]) -> str:
    """``base``, else the first of ``base-2``, ``base-3``, ... that ``taken`` (casefolded) does not hold."""
    name, count = base, 1
    while name.casefold() in taken:
        count += 1
        name = f"{base}-{count}"
    return name


def overlay_writer(
    captioner: Captioner,
    config: DecodingConfig,
    directory: Path,
    folders: dict[Path, str],
    indexed: Mapping[str, str] | None = None,
) -> Callable[[list[Path], torch.Tensor, list[list[Caption]]], None]:
    """``caption_files``' callback drawing the best caption's attention maps into DIR/<folders[image]>/.

    Each batch's images that ``indexed`` lacks are added to DIR/index.jsonl before their maps are drawn: no folder is
    written that the index does not name. An overlay that cannot be drawn is reported on stderr, not fatal.
    """
    known = dict(indexed or {})
    drop_unfinished_line(directory)

    def draw(paths: list[Path], pixels: torch.Tensor, captions: list[list[Caption]]) -> None:
        new = {str(path): folders[path] for path in paths if known.get(str(path)) != folders[path]}
        append_entries(directory, new)
        known.update(new)
        best = captioner.add_attention(
            pixels, [found[:1] for found in captions], config.start_token_id, config.prompt_ids
        )
        for path, (caption,) in zip(paths, best, strict=True):
            assert caption.tokens is not None and caption.attention is not None
            try:
                image = captioner.load_images([path])[0]
                # The preprocessing: a model that crops saw part of the photo, where its maps belong.
                write_overlays(
                    image, caption.tokens, caption.attention, directory / folders[path], captioner.preprocessing
                )
            except (CaptionkitError, OSError) as error:
                print(f"{path}: no attention maps: {error}", file=sys.stderr)

    return draw
