"""Flickr8k / Flickr30k token files (``Flickr8k.token.txt``, ``results_20130124.token``) and their split lists.

A token file holds ``NAME.jpg#N<TAB>caption`` a line. Split lists beside it (``Flickr_8k.trainImages.txt``,
``...devImages.txt``, ``...testImages.txt``: one file name a line) give the splits; when there are lists, an image
that is in none of them is dropped and counted. Images are looked for in ``Images/``, ``Flicker8k_Dataset/``,
``flickr30k-images/`` (beside the file or one folder up), unless image roots are given. A directory is read when it
(or a folder in it, such as ``Flickr8k_text/``) holds one token file, except when that has no split lists and the
directory holds a Karpathy split file: that carries the splits, so the directory reads as ``karpathy``.
"""

from __future__ import annotations

import re
from pathlib import Path

from captionkit.data.formats.base import Collector, ImageResolver, Probe, ReadOptions, ReadResult
from captionkit.data.formats.karpathy import image_roots, split_files
from captionkit.errors import InputError
from captionkit.files import read_text, text_lines

LINE = re.compile(r"^(?P<name>[^\t#]+)#(?P<number>\d+)\t(?P<caption>.*)$")
SPLIT_LISTS = {"train": "*trainImages.txt", "val": "*devImages.txt", "test": "*testImages.txt"}
NOT_LISTED = "caption of an image in no split list"


def detect_file(probe: Probe) -> bool:
    name = probe.path.name.lower()
    if name.endswith((".token.txt", ".token")):
        return True
    return probe.suffix == ".txt" and LINE.match(probe.first_line()) is not None


def token_files(directory: Path) -> list[Path]:
    patterns = ("*.token.txt", "*.token", "*text*/*.token.txt", "*text*/*.token")  # Flickr8k_text/
    found = [path for pattern in patterns for path in sorted(directory.glob(pattern))]
    # Flickr8k ships a lemmatized copy beside the real one; it is not a caption file to train on.
    return [path for path in found if "lemma" not in path.name.lower()]


def detect_dir(directory: Path) -> bool:
    """A token file, unless it has no split lists and a Karpathy split file beside it has the splits (Flickr30k is
    shipped so: results_20130124.token and dataset_flickr30k.json, whose splits are the ones papers use)."""
    files = token_files(directory)
    folders = {path.parent for path in files}
    with_lists = any(next(folder.glob(pattern), None) for folder in folders for pattern in SPLIT_LISTS.values())
    return bool(files) and (with_lists or not split_files(directory))


def split_lists(folder: Path) -> dict[str, Path]:
    lists = {}
    for split, pattern in SPLIT_LISTS.items():
        found = sorted(folder.glob(pattern))
        if len(found) > 1:
            raise InputError(folder, f"several {pattern} split lists: {', '.join(path.name for path in found)}")
        if found:
            lists[split] = found[0]
    return lists


def read(probe: Probe, options: ReadOptions) -> ReadResult:
    path = probe.path
    if path.is_dir():
        files = token_files(path)
        if not files:
            raise InputError(path, "no Flickr token file (*.token.txt, *.token)")
        if len(files) != 1:
            names = ", ".join(file.name for file in files)
            raise InputError(path, f"several Flickr token files ({names}); name one")
        path = files[0]
        probe = Probe(path)
    captions: list[tuple[str, str]] = []
    for number, line in enumerate(text_lines(probe.text()), start=1):
        if not line.strip():
            continue
        match = LINE.match(line)
        if match is None:
            raise InputError(f"{path}:{number}", "expected NAME.jpg#N<TAB>caption")
        captions.append((match["name"].strip(), match["caption"]))
    splits = _splits_by_image(path.parent)
    resolve = ImageResolver(image_roots(path.parent, [name for name, _ in captions], options))
    collector = Collector()
    collector.files += [path, *split_lists(path.parent).values()]
    for name, caption in captions:
        if splits is None:
            collector.add(resolve(name), caption, name)
        elif name not in splits:
            collector.drop(NOT_LISTED)
        else:
            # An image in two lists gets a record in each, so that `data check` reports the leak.
            for split in splits[name]:
                collector.add(resolve(name), caption, name, split=split)
    return collector.result(path)


def _splits_by_image(folder: Path) -> dict[str, list[str]] | None:
    lists = split_lists(folder)
    if not lists:
        return None
    splits: dict[str, list[str]] = {}
    for split, list_path in lists.items():
        # One name a line: a name may hold spaces ("my dog.jpg"), as the token file's may.
        for name in filter(None, (line.strip() for line in text_lines(read_text(list_path)))):
            splits.setdefault(name, []).append(split)
    return splits
