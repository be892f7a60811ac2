"""Attention overlays beside a batch job's records: DIR/<folder of the image>/<NNN>-<token>.png.

Folder names come from image file names, which a user (or whoever named the files) controls, so they are made
safe before they touch the file system: whatever the name (``..``, ``.``, separators, NUL, a very long name), the
folder is a direct child of DIR, and two images never share one.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from captionkit.api import Captioner
from captionkit.attention import write_overlays
from captionkit.decoding import Caption, DecodingConfig
from captionkit.errors import CaptionkitError

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


def overlay_folders(paths: Iterable[Path]) -> dict[Path, str]:
    """Each input's overlay folder name: its stem made safe; inputs that share one (ignoring case) get ``name``,
    ``name-2``, ... in input order. Made from the whole input list, which every shard, torchrun rank and resumed
    run sees alike, so no two of them give one name to different images."""
    folders: dict[Path, str] = {}
    taken: set[str] = set()
    for path in paths:
        if path in folders:
            continue
        base = safe_folder_name(path.stem)
        name, count = base, 1
        while name.casefold() in taken:  # case-insensitive file systems would give Dog and dog one folder
            count += 1
            name = f"{base}-{count}"
        folders[path] = name
        taken.add(name.casefold())
    return folders


def overlay_writer(
    captioner: Captioner, config: DecodingConfig, directory: Path, folders: dict[Path, str]
) -> Callable[[list[Path], torch.Tensor, list[list[Caption]]], None]:
    """``caption_files``' callback drawing the best caption's attention maps into DIR/<folders[image]>/.

    An overlay that cannot be drawn is reported on stderr, not fatal.
    """

    def draw(paths: list[Path], pixels: torch.Tensor, captions: list[list[Caption]]) -> None:
        best = captioner.add_attention(
            pixels, [found[:1] for found in captions], config.start_token_id, config.prompt_ids
        )
        for path, (caption,) in zip(paths, best, strict=True):
            assert caption.tokens is not None and caption.attention is not None
            try:
                image = captioner.load_images([path])[0]
                write_overlays(image, caption.tokens, caption.attention, directory / folders[path])
            except (CaptionkitError, OSError) as error:
                print(f"{path}: no attention maps: {error}", file=sys.stderr)

    return draw
