"""Users' folders and files as they come: folders reached through links (and links that loop), folders that cannot
be listed, and image lists saved by Windows' Notepad (a byte-order mark) or in Latin-1."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from _helpers import run_cli, save_tiny_model, unsearchable
from captionkit.data.sources import load_dataset
from captionkit.errors import InputError
from captionkit.jobs.inputs import collect_images, collect_inputs
from captionkit.jobs.outputs import RecordWriter, read_records

FAST = ["--beams", "1", "--max-length", "4"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def photo(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path


def unlistable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` cannot be listed (a folder without read permission, which root, who runs these tests, is never
    refused)."""
    for name in ("scandir", "listdir"):
        monkeypatch.setattr(os, name, _refusing(getattr(os, name), folder))


def _refusing(listing: Callable[..., Any], folder: Path) -> Callable[..., Any]:
    def refusing(path: Any = ".") -> Any:
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    return refusing


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    """``photos/`` with an image, a link to a folder elsewhere, a link to its own subfolder and a link that loops
    back to itself."""
    root = tmp_path / "photos"
    photo(root / "a.jpg")
    photo(root / "sub" / "b.jpg")
    photo(tmp_path / "elsewhere" / "c.jpg")
    (root / "disk").symlink_to(tmp_path / "elsewhere")
    (root / "again").symlink_to(root / "sub")
    (root / "sub" / "up").symlink_to(root)
    return root


def test_a_linked_folder_is_walked_once_and_a_loop_ends(linked: Path) -> None:
    """A link to a folder was never followed: its images left the job without a word."""
    assert collect_images([linked]) == [linked / "a.jpg", linked / "disk" / "c.jpg", linked / "sub" / "b.jpg"]
    assert [item.key for item in collect_inputs([linked])] == ["a.jpg", "disk/c.jpg", "sub/b.jpg"]


def test_a_link_to_a_folder_holding_the_walked_one_is_not_followed(tmp_path: Path) -> None:
    """``photos/up -> ..`` took every sibling of photos/ into the job (a link to / the whole disk)."""
    root = tmp_path / "photos"
    photo(root / "a.jpg")
    photo(tmp_path / "other" / "secret.jpg")
    (root / "up").symlink_to("..")
    (root / "top").symlink_to("/")
    assert collect_images([root]) == [root / "a.jpg"]


@pytest.mark.parametrize("backwards", [False, True])
def test_of_several_links_to_one_folder_the_first_in_path_order_names_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backwards: bool
) -> None:
    """Which link named the files followed the order the system listed the folder in, which differs between disks:
    a copy of a collection could give its images other keys, which --resume and merge take for other images."""
    root = tmp_path / "photos"
    root.mkdir()
    photo(tmp_path / "X" / "p.jpg")
    for name in ("b", "zz", "a"):
        (root / name).symlink_to(tmp_path / "X")
    listing = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: _Listed(listing(path), backwards))
    assert collect_images([root]) == [root / "a" / "p.jpg"]


class _Listed:
    """A scandir listing in name order, or backwards: file systems that list a folder in either."""

    def __init__(self, listing: Any, backwards: bool) -> None:
        self._listing, self._backwards = listing, backwards

    def __enter__(self) -> Iterator[os.DirEntry[str]]:
        entries = self._listing.__enter__()
        return iter(sorted(entries, key=lambda entry: entry.name, reverse=self._backwards))

    def __exit__(self, *exc: object) -> None:
        self._listing.__exit__(*exc)


def test_a_sidecar_dataset_reads_a_linked_folder_once(linked: Path) -> None:
    for image in (linked / "a.jpg", linked / "sub" / "b.jpg", linked / "disk" / "c.jpg"):
        image.with_suffix(".txt").write_text(f"a photo named {image.stem}\n", encoding="utf-8")
    records = load_dataset(f"folder:{linked}").records
    assert [(r.image_id, r.caption) for r in records] == [
        ("a.jpg", "a photo named a"),
        ("disk/c.jpg", "a photo named c"),
        ("sub/b.jpg", "a photo named b"),
    ]


def test_caption_records_a_folder_it_cannot_list(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a folder's images vanished from the job, which said "0 errors" and exited 0."""
    root = tmp_path / "photos"
    photo(root / "a.jpg")
    locked = root / "locked"
    photo(locked / "b.jpg")
    unlistable(monkeypatch, locked)
    code, stdout, err = run_cli(["caption", root, "--model", model_dir, *FAST], capsys)
    assert code == 2, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert records[0]["image"] == str(root / "a.jpg") and "caption" in records[0]
    assert records[1:] == [
        {
            "image": str(locked),
            "error": "a folder that cannot be listed (Permission denied): its images are not captioned",
        }
    ]


def test_caption_records_a_phone_photo_it_cannot_read_rather_than_skip_it(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder's HEIC photos were left out of the walk: the job said "1 image, 0 errors" and exited 0."""
    root = tmp_path / "phone"
    photo(root / "a.jpg")
    (root / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    code, stdout, err = run_cli(["caption", root, "--model", model_dir, *FAST], capsys)
    assert code == 2, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert records[0] == {
        "image": str(root / "IMG_0001.HEIC"),
        "error": "unsupported image format (HEIC); allowed: JPEG, PNG, WebP, GIF, BMP, TIFF",
    }
    assert records[1]["image"] == str(root / "a.jpg") and "caption" in records[1]


UNREADABLE = "a folder whose files cannot be read (permission denied): its images are left out"


@pytest.mark.parametrize("refuse", [unlistable, unsearchable])
def test_a_sidecar_dataset_counts_a_folder_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuse: Callable[[pytest.MonkeyPatch, Path], None]
) -> None:
    """A folder that could not be listed was skipped without a word; one whose files could not be looked at stopped
    `data check` and training in a traceback (PermissionError from ``Path.is_file``)."""
    root = tmp_path / "data"
    photo(root / "a.jpg").with_suffix(".txt").write_text("a red square\n", encoding="utf-8")
    locked = root / "locked"
    photo(locked / "b.jpg").with_suffix(".txt").write_text("another red square\n", encoding="utf-8")
    refuse(monkeypatch, locked)
    result = load_dataset(f"folder:{root}")
    assert [r.caption for r in result.records] == ["a red square"]
    assert result.dropped == {f"{locked}: {UNREADABLE}": 1}


@pytest.mark.parametrize("refuse", [unlistable, unsearchable])
def test_an_img2dataset_folder_it_cannot_read_is_counted_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuse: Callable[[pytest.MonkeyPatch, Path], None]
) -> None:
    root = tmp_path / "files"
    for number, folder in enumerate(("00000", "00001")):
        image = photo(root / folder / f"{number:09d}.jpg")
        image.with_suffix(".txt").write_text(f"photo {number}\n", encoding="utf-8")
        image.with_suffix(".json").write_text("{}", encoding="utf-8")
    refuse(monkeypatch, root / "00001")
    result = load_dataset(root)
    assert [r.caption for r in result.records] == ["photo 0"]
    assert result.dropped == {f"{root / '00001'}: {UNREADABLE}": 1}


def test_caption_gives_the_images_of_an_img2dataset_folder_it_cannot_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look for each image's ``KEY.json`` stopped the job in a traceback (PermissionError from ``is_file``)."""
    root = tmp_path / "files"
    for number, folder in enumerate(("00000", "00001")):
        photo(root / folder / f"{number:09d}.jpg").with_suffix(".json").write_text("{}", encoding="utf-8")
    unsearchable(monkeypatch, root / "00001")
    assert [item.key for item in collect_inputs([root])] == ["000000000", "00001/000000001.jpg"]


def test_data_check_of_a_folder_it_cannot_list_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A traceback (PermissionError from the COCO reader's look for its files) or, in training, an error naming
    ``captions.jsonl``, a file that was not there."""
    root = tmp_path / "data"
    photo(root / "a.jpg").with_suffix(".txt").write_text("a red square\n", encoding="utf-8")
    unlistable(monkeypatch, root)
    code, _, err = run_cli(["data", "check", root], capsys)
    assert (code, err) == (1, f"captionkit: error: {root}: cannot list the folder (Permission denied)\n")


def test_an_image_list_saved_with_a_byte_order_mark_and_crlf_names_its_first_image(tmp_path: Path) -> None:
    """Notepad's mark was taken into the first path, which was then "no such file"."""
    first, second = photo(tmp_path / "café 1.jpg"), photo(tmp_path / "日本.jpg")
    listing = tmp_path / "list.txt"
    listing.write_bytes("\ufeffcafé 1.jpg\r\n日本.jpg\r\n".encode())
    assert collect_images([listing]) == [first, second]


def test_an_image_list_written_on_windows_or_in_nfc_finds_its_images(tmp_path: Path) -> None:
    """``sub\\a.jpg`` (a list written on Windows) and an NFC name of a file stored NFD (as macOS stores names) were
    "no such file", where the dataset readers found the same names."""
    windows = photo(tmp_path / "sub" / "a.jpg")
    decomposed = photo(tmp_path / "cafe\u0301.jpg", "blue")
    listing = tmp_path / "list.txt"
    listing.write_text("sub\\a.jpg\r\ncaf\u00e9.jpg\r\n", encoding="utf-8")
    assert [(item.path, item.key) for item in collect_inputs([listing])] == [
        (windows, "sub\\a.jpg"),
        (decomposed, "caf\u00e9.jpg"),
    ]


def test_an_image_list_in_latin1_names_the_line(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"a.jpg\r\nb.jpg\n\xc3\xa9t\xc3\xa9/caf\xe9.jpg\n")  # UTF-8 "été/" then Latin-1 "café"
    with pytest.raises(InputError) as caught:
        collect_images([listing])
    reason = "image list is not UTF-8 text (byte 0xe9 at offset 22: line 3, column 8); save it as UTF-8"
    assert str(caught.value) == f"{listing}: {reason}"


def test_an_image_list_that_cannot_be_read_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A traceback (PermissionError) before."""
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg\n", encoding="utf-8")

    def refusing(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refusing)
    with pytest.raises(InputError) as caught:
        collect_images([listing])
    assert str(caught.value) == f"{listing}: cannot read the image list (Permission denied)"


def test_a_json_output_on_a_full_disk_keeps_the_old_file_and_leaves_no_staging_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging file stayed open until the garbage collector closed it, which failed again on the full disk: a
    traceback ("Exception ignored in: <generator object atomic_writer>") after the error's one line."""
    out = tmp_path / "out.json"
    out.write_text("[]\n", encoding="utf-8")
    opened = Path.open

    def on_a_full_disk(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if self.name.endswith(".tmp"):  # the staging file: made, but its bytes go to /dev/full
            self.touch()
            return opened(Path("/dev/full"), mode, *args, **kwargs)
        return opened(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", on_a_full_disk)
    writer = RecordWriter(out, "json")
    writer.write([{"image": "a.jpg", "caption": "a dog", "score": -0.5}])
    with pytest.raises(InputError) as raised:
        writer.close()
    assert str(raised.value) == f"{out}: cannot write (No space left on device)"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.json"]
    assert out.read_text(encoding="utf-8") == "[]\n"


def test_a_flickr_split_list_names_an_image_with_spaces(tmp_path: Path) -> None:
    """The lists were split at any whitespace: "my dog.jpg" became "my" and "dog.jpg", and its captions were
    dropped as in no split list."""
    root = tmp_path / "flickr"
    photo(root / "Images" / "my dog.jpg")
    photo(root / "Images" / "cat.jpg", "blue")
    (root / "Flickr8k.token.txt").write_text("my dog.jpg#0\ta dog runs\ncat.jpg#0\ta cat sits\n", encoding="utf-8")
    (root / "Flickr_8k.trainImages.txt").write_text("my dog.jpg\r\n", encoding="utf-8")
    (root / "Flickr_8k.testImages.txt").write_text("cat.jpg\r\n", encoding="utf-8")
    result = load_dataset(root)
    assert [(r.image_id, r.caption, r.split) for r in result.records] == [
        ("my dog.jpg", "a dog runs", "train"),
        ("cat.jpg", "a cat sits", "test"),
    ]
    assert result.dropped == {}


def test_a_latin1_caption_file_is_one_line_naming_the_file_line_and_column(tmp_path: Path) -> None:
    """The offset alone sent one counting bytes through a file of thousands of captions."""
    root = tmp_path / "data"
    photo(root / "a.jpg")
    photo(root / "b.jpg", "blue")
    table = root / "captions.csv"
    table.write_bytes(b"image,caption\r\na.jpg,a red square\r\nb.jpg,a caf\xe9 in blue\r\n")
    with pytest.raises(InputError) as caught:
        load_dataset(root)
    assert str(caught.value) == f"{table}: not UTF-8 text (byte 0xe9 at offset 46: line 3, column 12)"


def test_resume_continues_a_csv_saved_again_by_excel(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Excel's "CSV UTF-8" starts the file with a BOM: merge read such a file, but --resume refused it as "not
    captionkit csv results (header '\\ufeffimage,caption,score,error', ...)"."""
    root = tmp_path / "photos"
    photo(root / "a, b.jpg")
    out = tmp_path / "out.csv"
    assert run_cli(["caption", root, "--model", model_dir, "--output", out, *FAST], capsys)[0] == 0
    out.write_bytes(b"\xef\xbb\xbf" + out.read_bytes())
    photo(root / "c.jpg", "blue")
    code, _, err = run_cli(["caption", root, "--model", model_dir, "--output", out, "--resume", *FAST], capsys)
    assert code == 0, err
    assert "resuming: 1 of 2 images already done" in err
    assert [record["image"] for record in read_records(out, "csv")] == [str(root / "a, b.jpg"), str(root / "c.jpg")]
