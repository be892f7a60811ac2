"""METEOR's English data, read without Java from pycocoevalcap's ``meteor-1.5.jar`` (a zip) and
``data/paraphrase-en.gz``, kept as a compact cache that loads in a fraction of a second.

The cache is a folder of plain data (``meta.json`` and NumPy ``.npy`` arrays, memory-mapped with
``allow_pickle=False``), so it cannot run code. Its name carries a format version and the size and modification
time of both source files, so a new pycocoevalcap installation builds a new cache.

Words are looked up by a 64-bit BLAKE2b hash of their text, phrases by :func:`phrase_key` of their words' hashes.
The paraphrase table keeps the jar's direction and order: each record maps a phrase to one paraphrase, and a
phrase's records stay in the file's order (the jar's transducer emits them so, and its search breaks ties by it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captionkit.evaluation.external import MetricUnavailable, pycocoevalcap_dir

_FORMAT = 3
_PARTS = ("keys", "offsets", "values")
INSTALL = "install the extra (pip install 'captionkit[meteor]')"
_MASK = (1 << 64) - 1
MULTIPLIER = 0x9E3779B97F4A7C15


def word_hash(word: str) -> int:
    """The 64-bit key of a word."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def extend_key(key: int, next_word_hash: int) -> int:
    """The key of a phrase (``key``; 0 for none) followed by a word."""
    return (key * MULTIPLIER + next_word_hash) & _MASK


def phrase_key(word_hashes: Iterable[int]) -> int:
    """The 64-bit key of a phrase from its words' :func:`word_hash` (a one-word phrase's key is its word's)."""
    key = 0
    for h in word_hashes:
        key = extend_key(key, h)
    return key


@dataclass(frozen=True)
class HashedTable:
    """A multimap from hashed keys to values: ``values[offsets[k]:offsets[k + 1]]`` belong to ``keys[k]``."""

    keys: np.ndarray
    offsets: np.ndarray
    values: np.ndarray

    def lookup(self, key: int) -> np.ndarray:
        """The values of ``key`` (empty when it is absent), in ascending order."""
        k = int(np.searchsorted(self.keys, np.uint64(key)))
        if k == len(self.keys) or int(self.keys[k]) != key:
            return self.values[:0]
        return self.values[self.offsets[k] : self.offsets[k + 1]]

    @classmethod
    def build(cls, pairs_keys: np.ndarray, pairs_values: np.ndarray) -> HashedTable:
        order = np.lexsort((pairs_values, pairs_keys))
        keys_sorted, values = pairs_keys[order], pairs_values[order]
        keys, starts = np.unique(keys_sorted, return_index=True)
        offsets = np.append(starts, len(keys_sorted)).astype(np.int64)
        return cls(keys, offsets, values)


@dataclass(frozen=True)
class ParaphraseTable:
    """``records``: phrase key -> record numbers (file order); ``targets[r]`` and ``target_lengths[r]``: the key
    and word count of record ``r``'s paraphrase."""

    records: HashedTable
    targets: np.ndarray
    target_lengths: np.ndarray
    longest: int


@dataclass(frozen=True)
class MeteorData:
    """Function words, nonbreaking prefixes (1: always, 2: before a number), WordNet synsets and exceptions
    (irregular form -> base forms), and the paraphrase table."""

    function_words: frozenset[str]
    prefixes: dict[str, int]
    exceptions: dict[str, list[str]]
    synsets: HashedTable
    paraphrases: ParaphraseTable


def source_files() -> tuple[Path, Path]:
    """pycocoevalcap's jar and paraphrase table, or :class:`MetricUnavailable` naming the extra to install."""
    package = pycocoevalcap_dir()
    if package is None:
        raise MetricUnavailable(f"METEOR needs pycocoevalcap's data files: {INSTALL}")
    jar = package / "meteor" / "meteor-1.5.jar"
    table = package / "meteor" / "data" / "paraphrase-en.gz"
    for path in (jar, table):
        if not path.is_file():
            raise MetricUnavailable(f"METEOR: {path} is missing from the pycocoevalcap installation; {INSTALL}")
    return jar, table


def default_cache_root() -> Path:
    """``$CAPTIONKIT_CACHE`` or ``$XDG_CACHE_HOME/captionkit`` or ``~/.cache/captionkit``."""
    if os.environ.get("CAPTIONKIT_CACHE"):
        return Path(os.environ["CAPTIONKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "captionkit"


def cache_dir(jar: Path, table: Path, root: Path | None = None) -> Path:
    """The cache folder for these source files: a new one whenever either file changes."""
    stamp = [_FORMAT] + [(p.stat().st_size, p.stat().st_mtime_ns) for p in (jar, table)]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    return (root or default_cache_root()) / f"meteor-1.5-{key}"


def load_meteor_data(root: Path | None = None) -> MeteorData:
    """The English data, from the cache (built on first use, in ``root`` or :func:`default_cache_root`)."""
    jar, table = source_files()
    folder = cache_dir(jar, table, root)
    if not (folder / "meta.json").is_file():
        # Half a minute with nothing to show for it otherwise: say what is happening, once.
        print(f"METEOR: building its data cache in {folder} (once; about 30 s)", file=sys.stderr, flush=True)
        _build(jar, table, folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))

    def array(name: str) -> np.ndarray:
        # A plain array over the mapped file: indexing a np.memmap costs ten times more.
        return np.asarray(np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False))

    synsets, records = (
        HashedTable(*(array(f"{name}_{part}") for part in _PARTS)) for name in ("synsets", "paraphrases")
    )
    paraphrases = ParaphraseTable(records, array("paraphrase_targets"), array("paraphrase_lengths"), meta["longest"])
    return MeteorData(frozenset(meta["function_words"]), meta["prefixes"], meta["exceptions"], synsets, paraphrases)


def _build(jar: Path, table: Path, folder: Path) -> None:
    with zipfile.ZipFile(jar) as archive:
        function_words = archive.read("function/english.words").decode("utf-8").splitlines()
        prefixes = _prefixes(archive.read("nonbreaking/english.prefixes").decode("utf-8"))
        exceptions = _pairs(archive.read("synonym/english.exceptions").decode("utf-8"))
        synsets = _pairs(archive.read("synonym/english.synsets").decode("utf-8"))
    base_forms: dict[str, list[str]] = {}
    for base, irregular_forms in exceptions:
        for irregular in irregular_forms.split():
            base_forms.setdefault(irregular, []).append(base)
    syn_words = [word_hash(word) for word, ids in synsets for _ in ids.split()]
    syn_ids = [int(i) for _, ids in synsets for i in ids.split()]
    arrays = _table_arrays("synsets", HashedTable.build(np.array(syn_words, np.uint64), np.array(syn_ids, np.int64)))
    sources, targets, lengths, longest = _paraphrase_records(table)
    records = HashedTable.build(sources, np.arange(len(sources), dtype=np.int32))
    arrays |= _table_arrays("paraphrases", records)
    arrays |= {"paraphrase_targets": targets, "paraphrase_lengths": lengths}
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in arrays.items():
        partial = folder / f"{name}.{os.getpid()}.npy"
        np.save(partial, values, allow_pickle=False)
        os.replace(partial, folder / f"{name}.npy")
    meta = {
        "function_words": function_words,
        "prefixes": prefixes,
        "exceptions": base_forms,
        "longest": longest,
    }
    partial_meta = folder / f"meta.{os.getpid()}.json"
    partial_meta.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(partial_meta, folder / "meta.json")  # written last: its presence marks a complete cache


def _table_arrays(name: str, table: HashedTable) -> dict[str, np.ndarray]:
    return {f"{name}_{part}": getattr(table, part) for part in _PARTS}


def _prefixes(text: str) -> dict[str, int]:
    prefixes: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            prefixes[word] = 2 if "#NUMERIC_ONLY#" in rest else 1
    return prefixes


def _pairs(text: str) -> list[tuple[str, str]]:
    lines = text.split("\n")
    return [(lines[k].strip(), lines[k + 1].strip()) for k in range(0, len(lines) - 1, 2)]


def _paraphrase_records(table: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per record of the table (probability, phrase, paraphrase lines): the phrase's key, the paraphrase's key
    and word count; and the longest phrase's word count."""
    with gzip.open(table, "rt", encoding="utf-8") as lines:
        text = lines.read().split("\n")
    count = len(text) // 3
    hashes: dict[str, int] = {}
    keys: dict[str, tuple[int, int]] = {}

    def word(w: str) -> int:
        found = hashes.get(w)
        if found is None:
            found = hashes[w] = word_hash(w)
        return found

    def key(phrase: str) -> tuple[int, int]:
        found = keys.get(phrase)
        if found is None:
            words = phrase.split()
            found = keys[phrase] = (phrase_key(word(w) for w in words), len(words))
        return found

    sources = [key(p) for p in text[1 : 3 * count : 3]]
    targets = [key(p) for p in text[2 : 3 * count : 3]]
    longest = max((n for _, n in sources), default=1)
    return (
        np.fromiter((k for k, _ in sources), np.uint64, count),
        np.fromiter((k for k, _ in targets), np.uint64, count),
        np.fromiter((n for _, n in targets), np.uint8, count),
        longest,
    )
