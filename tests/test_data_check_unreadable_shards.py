"""`captionkit data check` of a shard collection with shards that cannot be read at all: each is listed (shard and
reason, JSON and text), the other shards are checked, and the exit is 2 (partial), as for a torn or damaged shard.

It stopped at the first such shard with one error line and exit 1: nothing of the other shards was checked, and the
next unreadable shard was found only on the next run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _helpers import run_cli
from _shards import real_photos, samples, write_parquet
from captionkit.shards import writing

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    """Five tar shards of two photos each; the second is garbage, the fourth empty."""
    written = writing.write_webdataset(samples(real_photos(10)), tmp_path / "shards", per_shard=2)
    written[1].write_bytes(os.urandom(4096))
    written[3].write_bytes(b"")
    return written


def test_each_unreadable_shard_is_listed_and_the_others_are_checked(
    shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["data", "check", shards[0].parent, "--json"], capsys)
    report = json.loads(out)
    assert (code, err) == (2, "")
    assert report["unreadable_shards"] == [
        {"shard": str(shards[1]), "reason": "not a readable tar file (invalid header)"},
        {"shard": str(shards[3]), "reason": "not a readable tar file (empty file)"},
    ]
    assert report["files"] == [str(shard) for shard in shards]
    assert (report["total"]["images"], report["total"]["captions"], report["errors"]) == (6, 6, 2)
    assert report["missing_images"] == report["unreadable_images"] == []

    code, out, _ = run_cli(["data", "check", shards[0].parent], capsys)
    assert code == 2
    assert (
        "2 unreadable shards (left out: the others are checked):\n"
        f"  {shards[1]}: not a readable tar file (invalid header)\n"
        f"  {shards[3]}: not a readable tar file (empty file)\n"
    ) in out
    assert out.endswith("\n2 errors\n")


def test_the_others_read_as_a_spec_naming_only_them_would(
    shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The spec's options (val=, seed=) apply to what is read, as load_dataset applies them."""
    options = "?val=0.4&seed=3"
    code, out, _ = run_cli(["data", "check", f"{shards[0].parent}{options}", "--json", "--no-images"], capsys)
    partial = json.loads(out)
    assert code == 2
    good = f"{shards[0].parent}/{{00000,00002,00004}}.tar{options}"
    code, out, _ = run_cli(["data", "check", good, "--json", "--no-images"], capsys)
    assert code == 0
    alone = json.loads(out)
    assert partial["splits"] == alone["splits"] and set(partial["splits"]) == {"train", "val"}
    assert partial["dropped"] == alone["dropped"] and partial["format"] == alone["format"] == "webdataset"


def test_an_unreadable_parquet_file_is_listed_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = real_photos(4)
    folder = tmp_path / "parquet"
    folder.mkdir()
    write_parquet(photos[:2], folder / "a.parquet")
    (folder / "b.parquet").write_bytes(b"PAR1 and then not Parquet at all")
    code, out, _ = run_cli(["data", "check", folder, "--json"], capsys)
    report = json.loads(out)
    assert code == 2 and report["total"]["captions"] == 2
    [entry] = report["unreadable_shards"]
    assert entry["shard"] == str(folder / "b.parquet")
    assert entry["reason"].startswith("not a readable Parquet file (")


def test_no_readable_shard_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing to check: the first shard's error, as before."""
    folder = tmp_path / "shards"
    folder.mkdir()
    for name in ("00000.tar", "00001.tar"):
        (folder / name).write_bytes(b"")
    code, out, err = run_cli(["data", "check", folder], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: {folder / '00000.tar'}: not a readable tar file (empty file)\n"


def test_a_readable_collection_reports_no_unreadable_shard_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "shards"
    writing.write_webdataset(samples(real_photos(4)), folder, per_shard=2)
    code, out, _ = run_cli(["data", "check", folder, "--json", "--no-images"], capsys)
    report = json.loads(out)
    assert (code, report["unreadable_shards"], report["errors"]) == (0, [], 0)
