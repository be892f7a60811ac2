"""Counts with their nouns and "did you mean" hints come from one module (captionkit.wording), in every layer.

There were two ``plural`` helpers (the CLI's, which wrote "1200 images", and the training summary's, "1,200 images")
and three copies of the difflib hint (two in config.py, one in serve/params.py); the hints read as they did, and
every count of a thousand or more is grouped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import captionkit
from captionkit.config import load_train_config, packaged_recipes
from captionkit.errors import ConfigError
from captionkit.wording import closest, plural, tally

ROOT = Path(captionkit.__file__).parent


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, "0 images"),
        (1, "1 image"),
        (2, "2 images"),
        (1200, "1,200 images"),  # every layer groups thousands, as the training summary did
        (1234567, "1,234,567 images"),
        ("1", "1 image"),
        ("0.5", "0.5 images"),
    ],
)
def test_plural_writes_the_count_as_given(count: int | str, expected: str) -> None:
    assert plural(count, "image") == expected


def test_tally_puts_each_count_before_its_reason_in_the_order_given() -> None:
    # Three layers wrote "N x reason" (data readers, the training summary, the caption job), one without grouping.
    assert tally({"empty caption": 1200, "row without image bytes": 1}) == (
        "1,200 x empty caption, 1 x row without image bytes"
    )
    assert tally({}) == ""


def test_closest_is_the_name_itself_a_near_miss_or_none() -> None:
    known = ["num_beams", "beams", "temperature", "top_k"]
    assert closest("beams", known) == "beams"
    assert closest("temprature", known) == "temperature"
    assert closest("beam", known) == "beams"
    assert closest("colour", known) is None


def test_configs_hints_read_as_before() -> None:
    """(The server's is pinned in test_serve_bad_input.py.)"""
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["train.stpes=3"])
    assert str(caught.value).startswith("--set train.stpes: unknown key (did you mean 'steps'? known: ")
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["train.zzzzzz=3"])
    assert str(caught.value).startswith("--set train.zzzzzz: unknown key (known: ")
    with pytest.raises(ConfigError) as caught:
        load_train_config("coco-vit-gpt")
    recipes = ", ".join(packaged_recipes())
    expected = f"no such config file or packaged recipe (did you mean 'coco-vit-gpt2'? recipes: {recipes})"
    assert (caught.value.source, caught.value.reason) == ("coco-vit-gpt", expected)


def _definitions_and_difflib_users() -> tuple[list[str], list[str]]:
    """The modules of captionkit that define a function ``plural``, and those that import difflib."""
    defining, importing = [], []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "plural":
                defining.append(module)
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if "difflib" in names or (isinstance(node, ast.ImportFrom) and node.module == "difflib"):
                importing.append(module)
    return defining, importing


def test_one_plural_and_one_did_you_mean_in_the_package() -> None:
    """A second copy drifts: the two plurals already wrote counts differently (1200 and 1,200)."""
    assert _definitions_and_difflib_users() == (["captionkit.wording"], ["captionkit.wording"])


def test_the_caption_jobs_closing_line_groups_every_count_alike() -> None:
    """The README's example line: its image count came through plural ("3,000") and its captioned count did not
    ("2998"), one line writing numbers two ways."""
    from captionkit.cli.caption import _summary_line
    from captionkit.jobs.batch import JobSummary
    from captionkit.jobs.run import JobOutcome

    outcome = JobOutcome(
        JobSummary(images=3000, captioned=2998, errors=2), 0, False, load_seconds=4.12, caption_seconds=18.58
    )
    assert _summary_line(outcome) == (
        "3,000 images: 2,998 captioned, 2 errors; 161.5 images/s (18.58 s; loading the model 4.12 s)"
    )
