"""Captioner.save_pretrained() and Captioner.from_onnx(threads=...) with what users pass by mistake: a file where a
directory belongs, an export's directory, a disk that refuses the write, a thread count onnxruntime cannot take; each
is one InputError line naming it, and nothing already there is lost or shadowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from _data import COCO_PHOTOS
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.errors import InputError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def captioner(source: Path) -> Captioner:
    return Captioner.from_pretrained(source, device="cpu")


def test_saving_onto_a_file_is_one_input_error(captioner: Captioner, tmp_path: Path) -> None:
    """It was a bare FileExistsError ("[Errno 17] File exists"), from mkdir."""
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"kept")
    with pytest.raises(InputError, match=rf"^{target}: is a file; expected a directory to save the checkpoint in$"):
        captioner.save_pretrained(target)
    assert target.read_bytes() == b"kept"


def test_a_full_disk_is_one_input_error(captioner: Captioner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the OS answers mid-save (ENOSPC, EROFS, EACCES) is one line naming the directory, not torch's traceback
    (an OSError stands in: the tests run as root, whom a read-only directory does not stop)."""

    def full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("captionkit.parts.CaptionerParts.save", full)
    with pytest.raises(InputError, match=rf"^{tmp_path / 'm'}: cannot save the checkpoint here \(No space left"):
        captioner.save_pretrained(tmp_path / "m")


@pytest.mark.parametrize("kind", ["int8", "onnx"])
def test_saving_into_an_exports_directory_is_refused(
    captioner: Captioner, source: Path, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint was written beside the export's marker file, and the directory went on loading as the old
    export: a fine-tuned model saved there was silently never used."""
    export = tmp_path / kind
    code, _, err = run_cli(["export", kind, "--model", source, "--output", export], capsys)
    assert code == 0, err
    before = sorted(path.name for path in export.iterdir())
    with pytest.raises(InputError, match=rf"^{export}: holds an? (int8|ONNX) export \(\w+\.json\), which it would"):
        captioner.save_pretrained(export)
    assert sorted(path.name for path in export.iterdir()) == before


def test_saving_over_its_own_directory_reloads_the_same_model(captioner: Captioner, tmp_path: Path) -> None:
    captioner.save_pretrained(tmp_path / "again")
    captioner.save_pretrained(tmp_path / "again")  # a rerun into the same directory replaces, and still loads
    again = Captioner.from_pretrained(tmp_path / "again", device="cpu")
    photo = sorted(COCO_PHOTOS.glob("*.jpg"))[0]
    options = {"num_beams": 2, "max_new_tokens": 5}
    assert again.caption(photo, **options)[0].captions == captioner.caption(photo, **options)[0].captions


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True], ids=repr)
def test_a_bad_onnx_thread_count_is_one_input_error_before_loading(threads: object, tmp_path: Path) -> None:
    """-1 was taken without a word; 1.5 and "2" were onnxruntime's many-line pybind TypeError, after the load."""
    with pytest.raises(InputError, match=r"^threads: must be an integer >= 1 \(or None: torch's thread count\), got"):
        Captioner.from_onnx(tmp_path / "nothing-loaded", threads=threads)  # type: ignore[arg-type]
