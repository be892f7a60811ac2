"""``captionkit merge`` refusing an --output that is an --inputs list, and Ctrl-C ending it with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from _helpers import run_cli


def _part(path: Path, images: list[str]) -> Path:
    path.write_text("".join(json.dumps({"image": image, "caption": "a dog", "score": -1.0}) + "\n" for image in images))
    return path


def test_output_that_is_the_inputs_list_is_refused_and_left_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--output photos.txt --inputs photos.txt`` used to replace the list of images with the merged records."""
    listing = tmp_path / "photos.txt"
    listing.write_text("a.jpg\nb.jpg\n")
    part = _part(tmp_path / "c.part-0-of-1.jsonl", ["a.jpg", "b.jpg"])
    code, out, err = run_cli(["merge", part, "--output", listing, "--inputs", listing], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: --output: {listing} is also an input; write the results to a new file\n"
    assert listing.read_text() == "a.jpg\nb.jpg\n"


def test_ctrl_c_says_the_output_is_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C used to end merge with exit 130 and not a word."""
    import captionkit.jobs.merge as merge_job

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(merge_job, "merge_parts", interrupted)
    output = tmp_path / "all.jsonl"
    output.write_text("earlier\n")
    part = _part(tmp_path / "c.part-0-of-1.jsonl", ["a.jpg"])
    code, out, err = run_cli(["merge", part, "--output", output], capsys)
    assert (code, out) == (130, "")
    assert err == f"captionkit: interrupted: {output} left as it was (nothing written)\n"
    assert output.read_text() == "earlier\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["all.jsonl", "c.part-0-of-1.jsonl"]


def test_ctrl_c_while_writing_removes_the_staged_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import captionkit.jobs.outputs as outputs

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.RecordWriter, "write", interrupted)
    output = tmp_path / "all.jsonl"
    part = _part(tmp_path / "c.part-0-of-1.jsonl", ["a.jpg", "b.jpg"])
    code, _, err = run_cli(["merge", part, "--output", output], capsys)
    assert code == 130
    assert err == f"captionkit: interrupted: {output} left as it was (nothing written)\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c.part-0-of-1.jsonl"]


def test_a_record_whose_caption_is_null_is_not_counted_as_captioned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``{"image": ..., "caption": null}`` used to merge as a captioned image: exit 0, 0 errors, nothing to show."""
    part = tmp_path / "c.part-0-of-1.jsonl"
    part.write_text('{"image": "a.jpg", "caption": "a dog"}\n{"image": "b.jpg", "caption": null}\n')
    output = tmp_path / "all.jsonl"
    code, out, err = run_cli(["merge", part, "--output", output], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: {part}: line 2 ('b.jpg') has neither a caption nor an error\n"
    assert not output.exists()


def test_inputs_that_hold_no_image_are_an_error_before_any_merging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty --inputs folder used to merge every record as "not among --inputs" and exit 2, with no word that the
    folder held nothing (``caption`` refuses such inputs)."""
    empty = tmp_path / "photos"
    empty.mkdir()
    part = _part(tmp_path / "c.part-0-of-1.jsonl", ["a.jpg"])
    output = tmp_path / "all.jsonl"
    code, out, err = run_cli(["merge", part, "--output", output, "--inputs", empty], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: {empty}: no images found (--inputs)\n"
    assert not output.exists()


def test_one_missing_input_is_reported_in_the_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (photos / name).write_bytes(b"x")
    part = _part(tmp_path / "c.part-0-of-1.jsonl", [str(photos / "a.jpg")])
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "all.jsonl", "--inputs", photos], capsys)
    assert code == 2
    assert f"captionkit merge: 1 input has no record: {photos / 'b.jpg'}\n" in err


def test_help_says_how_the_format_is_chosen_and_what_exits_2() -> None:
    """The help used to say the format came "from --output", silent on the jsonl an unknown suffix gets, on parts,
    and on the exit 2 for a part's unfinished last line."""
    import typer

    from captionkit.cli.app import build_app

    merge = typer.main.get_command(build_app()).commands["merge"]  # type: ignore[attr-defined]
    fmt = next(param for param in merge.params if "--format" in param.opts)
    assert "from its suffix, else jsonl" in fmt.help and "a part whose suffix" in fmt.help
    assert "unfinished last line" in " ".join(merge.help.split())


@pytest.mark.parametrize("name", ["c.part-0-of-1.csv", "c.part-0-of-1.jsonl", "c.part-0-of-1.json"])
def test_a_utf16_part_is_one_error_naming_its_encoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A CSV part saved as UTF-16 used to fail as "line 2 has no image", a JSON lines one as invalid JSON."""
    part = tmp_path / name
    text = {
        ".csv": "image,caption\na.jpg,a dog\n",
        ".jsonl": '{"image": "a.jpg", "caption": "a dog"}\n',
        ".json": '[{"image": "a.jpg", "caption": "a dog"}]',
    }[part.suffix]
    part.write_text(text, encoding="utf-16")
    code, out, err = run_cli(["merge", part, "--output", tmp_path / "all.jsonl"], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: {part}: UTF-16 text: save it as UTF-8\n"


def test_a_part_given_by_two_files_is_named_with_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two nodes' copies of part 0/2 (two runs, or a rerun under another folder) used to show only as duplicate
    images, with no word of which files clash."""
    (tmp_path / "n1").mkdir()
    (tmp_path / "n2").mkdir()
    first = _part(tmp_path / "n1" / "c.part-0-of-2.jsonl", ["a.jpg"])
    second = _part(tmp_path / "n2" / "c.part-0-of-2.jsonl", ["a.jpg"])
    other = _part(tmp_path / "c.part-1-of-2.jsonl", ["b.jpg"])
    code, _, err = run_cli(["merge", first, second, other, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 0
    assert f"captionkit merge: parts given by more than one file: 0/2 ({first}, {second})\n" in err
    assert "missing parts" not in err


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.part-0-of-1.csv", "image,caption,score,error\na.jpg,a dog,-1.0,\n"),
        ("c.part-0-of-1.jsonl", '{"image": "a.jpg", "caption": "a dog", "score": -1.0}\n'),
        ("c.part-0-of-1.json", '[{"image": "a.jpg", "caption": "a dog", "score": -1.0}]'),
    ],
)
def test_a_part_saved_with_a_utf8_bom_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    """A part saved by Excel ("CSV UTF-8") or an editor that starts files with a BOM: its header read as "\\ufeffimage",
    every row failed as having no image."""
    part = tmp_path / name
    part.write_text(text, encoding="utf-8-sig")
    out = tmp_path / "all.jsonl"
    code, _, err = run_cli(["merge", part, "--output", out], capsys)
    assert code == 0, err
    assert [json.loads(line)["image"] for line in out.read_text().splitlines()] == ["a.jpg"]
