"""What a user walking through docs/large-jobs.md and the README's "Caption a million images" met: ``--shard`` parts
captioned with other settings merged without a word, and a Ray run's records differing from the default engine's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _helpers import run_cli
from captionkit.decoding import DecodingConfig
from captionkit.jobs.run_settings import run_settings, write_settings


def _part(path: Path, images: list[str], beams: int) -> Path:
    """A part as ``caption --shard`` leaves it: its records, and its run's settings beside it."""
    path.write_text("".join(json.dumps({"image": image, "caption": "a dog", "score": -1.0}) + "\n" for image in images))
    write_settings(path, run_settings("models/tiny", "fp32", None, None, DecodingConfig(num_beams=beams)))
    return path


def test_merge_refuses_parts_captioned_with_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A part re-run with ``--beams 2`` used to merge with the ``--beams 1`` ones: exit 0, two kinds of captions."""
    first = _part(tmp_path / "c.part-0-of-2.jsonl", ["a.jpg"], beams=1)
    second = _part(tmp_path / "c.part-1-of-2.jsonl", ["b.jpg"], beams=2)
    output = tmp_path / "all.jsonl"
    code, out, err = run_cli(["merge", first, second, "--output", output], capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"captionkit: error: {second}: captioned with num_beams 2, but {first} with num_beams 1: merge parts of runs "
        "with the same settings (deleting .c.part-1-of-2.jsonl.settings.json merges it unchecked)\n"
    )
    assert not output.exists()


def test_merge_takes_parts_of_the_same_settings_or_none_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _part(tmp_path / "c.part-0-of-3.jsonl", ["a.jpg"], beams=1)
    second = _part(tmp_path / "c.part-1-of-3.jsonl", ["b.jpg"], beams=1)
    copied = tmp_path / "c.part-2-of-3.jsonl"  # copied from another node without its hidden settings
    copied.write_text(json.dumps({"image": "c.jpg", "caption": "a cat", "score": -2.0}) + "\n")
    output = tmp_path / "all.jsonl"
    code, _, err = run_cli(["merge", first, second, copied, "--output", output], capsys)
    assert (code, err) == (0, f"merged 3 parts: 3 records (0 errors) -> {output}\n")
    assert [json.loads(line)["image"] for line in output.read_text().splitlines()] == ["a.jpg", "b.jpg", "c.jpg"]


def test_merge_refuses_an_output_named_as_a_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``merge c.part-0-of-2.jsonl --output c.part-1-of-2.jsonl`` replaced part 1 with part 0's records, exit 2."""
    first = _part(tmp_path / "c.part-0-of-2.jsonl", ["a.jpg"], beams=1)
    second = _part(tmp_path / "c.part-1-of-2.jsonl", ["b.jpg"], beams=1)
    kept = second.read_text()
    code, out, err = run_cli(["merge", first, "--output", second], capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"captionkit: error: --output: {second} is named as part 1/2 of a sharded run; write the merged result to a "
        "name without .part-K-of-N\n"
    )
    assert second.read_text() == kept


def test_ctrl_c_while_the_model_loads_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C before the first batch (the model loading, the shards being counted) ended with exit 130 and no word."""
    import captionkit.jobs.run as run_job

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_job, "run_caption_job", interrupted)
    output = tmp_path / "c.jsonl"
    code, out, err = run_cli(["caption", tmp_path, "--model", tmp_path / "model", "--output", output], capsys)
    assert (code, out) == (130, "")
    assert err == "captionkit: interrupted before captioning began: nothing written\n"
    assert not output.exists()


def test_a_shard_pattern_that_finds_nothing_names_the_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``'shards/{000000..000009}.tar'`` for shards named 00000.tar said only ``shards/000000.tar: no such file``."""
    pattern = f"{tmp_path}/shards/{{000000..000009}}.tar"
    output = tmp_path / "c.jsonl"
    code, out, err = run_cli(["caption", pattern, "--model", tmp_path / "model", "--output", output], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: {pattern}: its first shard, {tmp_path}/shards/000000.tar, does not exist\n"
    assert not output.exists()
