"""Caption cases for the METEOR tests: real caption groups from ../shared/data and perturbed candidates."""

from __future__ import annotations

import json
from collections.abc import Callable

from _data import SHARED_DATA

Group = list[str]  # an image's captions


def caption_groups(limit: int) -> dict[str, list[Group]]:
    """Up to ``limit`` images' raw captions from each dataset: COCO val2017, Flickr8k, SentiCap (whitespace runs,
    newlines among them, made single spaces: the jar reads a line per caption)."""
    coco = json.loads((SHARED_DATA / "coco" / "captions_val2017.json").read_text(encoding="utf-8"))
    by_image: dict[int, Group] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["caption"])
    flickr: dict[str, Group] = {}
    for line in (SHARED_DATA / "flickr8k" / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        name, caption = line.split("\t", 1)
        flickr.setdefault(name.split("#")[0], []).append(caption)
    senticap = json.loads((SHARED_DATA / "senticap" / "senticap_subset.json").read_text(encoding="utf-8"))
    senti = [[s["raw"] for s in image["sentences"]] for image in senticap["images"]]
    groups = {"coco": list(by_image.values()), "flickr8k": list(flickr.values()), "senticap": senti}
    return {
        name: [[" ".join(c.split()) for c in g] for g in found if len(g) > 1][:limit] for name, found in groups.items()
    }


_SYNONYMS = {"man": "guy", "big": "large", "small": "little", "picture": "photo", "road": "street",
             "couch": "sofa", "woman": "lady", "kid": "child", "sitting": "seated", "near": "close", "plate": "dish",
             "boy": "male child", "large": "big", "looking": "staring", "walking": "strolling", "photo": "image",
             "food": "nutrient"}  # fmt: skip
_PARAPHRASES = {"next to": "beside", "in front of": "before", "a lot of": "many", "on top of": "atop",
                "a group of": "a bunch of", "is sitting": "sits", "are standing": "stand", "a couple of": "two",
                "close to": "near", "in the": "inside the", "a man": "someone"}  # fmt: skip


def _words(caption: str) -> list[str]:
    return caption.lower().rstrip(" .").split()


def _synonyms(caption: str) -> str:
    return " ".join(_SYNONYMS.get(w, w) for w in _words(caption))


def _stems(caption: str) -> str:
    def restem(word: str) -> str:
        if len(word) <= 3:
            return word
        for suffix, replacement in (("ing", "s"), ("s", ""), ("ed", "ing")):
            if word.endswith(suffix):
                return word[: -len(suffix)] + replacement
        return word + "s"

    return " ".join(restem(w) for w in _words(caption))


def _paraphrases(caption: str) -> str:
    text = " ".join(_words(caption))
    for phrase, paraphrase in _PARAPHRASES.items():
        text = f" {text} ".replace(f" {phrase} ", f" {paraphrase} ").strip()
    return text


def _reordered(caption: str) -> str:
    words = _words(caption)
    third = max(len(words) // 3, 1)
    return " ".join(words[2 * third :] + words[third : 2 * third] + words[:third])


def _repeated(caption: str) -> str:
    return " ".join(w for w in _words(caption) for _ in range(2))


#: Perturbation name -> how it rewrites a reference into a candidate.
PERTURBATIONS: dict[str, Callable[[str], str]] = {
    "synonyms": _synonyms,
    "stems": _stems,
    "paraphrases": _paraphrases,
    "reordered": _reordered,
    "repeated": _repeated,
}
#: Candidates with little or nothing in them.
EDGE_CANDIDATES = ["", "dog", "a", "...", "! ? ,", "-- ; :", "a a a a", "A.", "man"]
