"""Output paths a command cannot write are one-line errors before any model loads, and an export never writes over
the model it exports (the black-box audit's defects: data loss, tracebacks after the whole run, silent exit 0)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from _data import SHARED_DATA, copy_coco_photos
from _helpers import run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.errors import InputError
from captionkit.files import check_output_dir, check_output_file
from captionkit.parts import CaptionerParts

COCO = SHARED_DATA / "coco" / "val2017"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tm")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real COCO photos in a folder."""
    return copy_coco_photos(tmp_path_factory.mktemp("photos"), 2)


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a directory named like a file (dir.jpg), a file named like a directory (notadir)
    and an empty directory; the commands get paths relative to it, as a user types them."""
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "dir.jpg" / "keep.txt").write_text("kept\n")
    (tmp_path / "notadir").write_text("a plain file\n")
    (tmp_path / "emptydir").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command loads a model: a bad output path must be refused before that."""

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("a model was loaded before the output path was checked")

    monkeypatch.setattr(Captioner, "from_pretrained", refuse)
    monkeypatch.setattr(CaptionerParts, "load", refuse)


def one_error(err: str) -> str:
    """The one line a failed command printed on stderr (and that it printed exactly one)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def digest(directory: Path) -> dict[str, str]:
    """Each file under ``directory`` and a hash of its bytes: to show nothing there changed."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# The helpers.


def test_check_output_file_accepts_new_and_existing_files(tmp_path: Path):
    (tmp_path / "old.jsonl").write_text("{}\n")
    check_output_file(tmp_path / "old.jsonl", "--output")
    check_output_file(tmp_path / "new.jsonl", "--output")
    check_output_file(tmp_path / "not" / "yet" / "made.jsonl", "--output")  # commands make the parents


def test_check_output_file_refuses_a_directory_and_a_path_under_a_file(places: Path):
    with pytest.raises(InputError) as error:
        check_output_file(Path("dir.jpg"), "--output")
    assert str(error.value) == "--output: dir.jpg is a directory"
    with pytest.raises(InputError) as error:
        check_output_file(Path("notadir/x.jsonl"), "--report")
    assert str(error.value) == "--report: notadir/x.jsonl: notadir is not a directory"
    with pytest.raises(InputError) as error:
        check_output_file(Path("notadir/deeper/x.jsonl"), "--output")
    assert str(error.value) == "--output: notadir/deeper/x.jsonl: notadir is not a directory"


def test_check_output_file_refuses_a_device_or_fifo(tmp_path: Path):
    """Outputs are staged beside and renamed over: over /dev/null (as root) that replaced the device node for every
    program on the machine; a FIFO's reader would never get a byte."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (Path(os.devnull), fifo):
        with pytest.raises(InputError) as error:
            check_output_file(path, "--per-image")
        assert str(error.value) == f"--per-image: {path} is not a regular file (a device, FIFO or socket); name a file"
    (tmp_path / "link").symlink_to(fifo)  # followed: /dev/stdout is a link
    with pytest.raises(InputError, match="is not a regular file"):
        check_output_file(tmp_path / "link", "--output")


def test_check_output_dir_refuses_a_file_and_a_path_under_a_file(places: Path):
    check_output_dir(Path("emptydir"), "--output")
    check_output_dir(Path("dir.jpg"), "--output")
    check_output_dir(Path("new/run"), "--output")
    with pytest.raises(InputError) as error:
        check_output_dir(Path("notadir"), "--output", noun="run directory")
    assert str(error.value) == "--output: notadir is a file, not a run directory"
    with pytest.raises(InputError) as error:
        check_output_dir(Path("notadir/run"), "--output")
    assert str(error.value) == "--output: notadir/run: notadir is not a directory"


def test_unwritable_directories_are_refused(places: Path, monkeypatch: pytest.MonkeyPatch):
    # Tests run as root, whom permissions do not stop: the check asks os.access, so a read-only
    # directory is simulated there.
    real_access = os.access
    read_only = places / "ro"
    read_only.mkdir()

    def access(path: object, mode: int, **kwargs: object) -> bool:
        if Path(str(path)).resolve() == read_only and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(InputError) as error:
        check_output_file(Path("ro/x.jsonl"), "--output")
    assert str(error.value) == "--output: ro/x.jsonl: ro is not writable"
    with pytest.raises(InputError) as error:
        check_output_dir(Path("ro"), "--output")
    assert str(error.value) == "--output: ro is not writable"
    with pytest.raises(InputError) as error:
        check_output_dir(Path("ro/run"), "--output")
    assert str(error.value) == "--output: ro/run: ro is not writable"


# caption


@pytest.mark.usefixtures("no_model_loads")
@pytest.mark.parametrize(
    ("flag", "path", "message"),
    [
        ("--output", "dir.jpg", "--output: dir.jpg is a directory"),
        ("--output", "notadir/x.jsonl", "--output: notadir/x.jsonl: notadir is not a directory"),
        ("--attention-maps", "notadir", "--attention-maps: notadir is a file, not a directory"),
        ("--attention-maps", "notadir/maps", "--attention-maps: notadir/maps: notadir is not a directory"),
    ],
)
def test_caption_refuses_unwritable_outputs_before_loading(places, photos, model_dir, capsys, flag, path, message):
    before = digest(places)
    code, out, err = run_cli(["caption", photos, "--model", model_dir, flag, path], capsys)
    assert (code, out) == (1, "")
    assert one_error(err) == f"captionkit: error: {message}"
    assert digest(places) == before


def test_caption_refuses_a_read_only_output_directory(places, photos, model_dir, capsys, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path).name != "ro" and real_access(path, mode))
    (places / "ro").mkdir()
    code, _, err = run_cli(["caption", photos, "--model", model_dir, "--output", "ro/x.jsonl"], capsys)
    assert code == 1
    assert one_error(err) == "captionkit: error: --output: ro/x.jsonl: ro is not writable"


# evaluate


@pytest.mark.usefixtures("no_model_loads")
@pytest.mark.parametrize(
    ("flag", "path", "message"),
    [
        ("--output", "notadir", "--output: notadir is a file, not a directory"),
        ("--output", "notadir/eval", "--output: notadir/eval: notadir is not a directory"),
        ("--report", "dir.jpg", "--report: dir.jpg is a directory"),
        ("--report", "notadir/r.html", "--report: notadir/r.html: notadir is not a directory"),
    ],
)
def test_evaluate_refuses_unwritable_outputs_before_loading(places, photos, model_dir, capsys, flag, path, message):
    before = digest(places)
    code, out, err = run_cli(["evaluate", "--model", model_dir, "--data", photos, flag, path], capsys)
    assert (code, out) == (1, "")
    assert one_error(err) == f"captionkit: error: {message}"
    assert digest(places) == before


# compare


@pytest.mark.usefixtures("no_model_loads")
@pytest.mark.parametrize(
    ("flag", "path", "message"),
    [
        ("--output", "dir.jpg", "--output: dir.jpg is a directory"),
        ("--output", "notadir/x.jsonl", "--output: notadir/x.jsonl: notadir is not a directory"),
        ("--report", "dir.jpg", "--report: dir.jpg is a directory"),
        ("--report", "notadir/r.html", "--report: notadir/r.html: notadir is not a directory"),
    ],
)
def test_compare_refuses_unwritable_outputs_before_loading(places, photos, model_dir, capsys, flag, path, message):
    before = digest(places)
    models = ["--model", f"a={model_dir}", "--model", f"b={model_dir}"]
    code, out, err = run_cli(["compare", photos, *models, flag, path], capsys)
    assert (code, out) == (1, "")
    assert one_error(err) == f"captionkit: error: {message}"
    assert digest(places) == before


@pytest.mark.usefixtures("no_model_loads")
def test_compare_of_a_folder_without_images_fails_as_benchmark_does(places, model_dir, capsys):
    code, out, err = run_cli(["compare", "emptydir", "--model", f"a={model_dir}", "--model", f"b={model_dir}"], capsys)
    assert (code, out) == (1, "")
    assert one_error(err) == "captionkit: error: emptydir: no images found"


def test_compare_makes_the_folders_of_its_output_and_report(places, photos, model_dir, capsys):
    models = ["--model", f"a={model_dir}", "--model", f"b={model_dir}", "--max-length", "4"]
    args = ["compare", photos, *models, "--output", "new/x.jsonl", "--report", "pages/r.html"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (places / "new" / "x.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == sorted(p.name for p in photos.iterdir())
    assert (places / "pages" / "r.html").read_text().startswith("<!")


def test_compare_takes_a_model_directory_whose_name_holds_an_equals_sign(places, photos, model_dir, capsys):
    # runs/lr=0.1 was split at its "=" into a column "runs/lr" and a hub id "0.1", named or not.
    shutil.copytree(model_dir, places / "runs" / "lr=0.1")
    models = ["--model", "runs/lr=0.1", "--model", "b=runs/lr=0.1", "--max-length", "4"]
    code, out, err = run_cli(["compare", photos, *models], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2
    assert all(list(r["captions"]) == ["runs/lr=0.1", "b"] for r in records)
    assert all(r["captions"]["runs/lr=0.1"] == r["captions"]["b"] for r in records)


# export


@pytest.mark.parametrize("command", ["int8", "onnx"])
def test_export_refuses_to_write_over_the_model_it_exports(places, model_dir, capsys, command):
    before = digest(model_dir)
    # The same directory under another name: resolved, it is still the model.
    (places / "link").symlink_to(model_dir)
    for output in (model_dir, places / "link", model_dir / ".." / model_dir.name):
        code, out, err = run_cli(["export", command, "--model", model_dir, "--output", output], capsys)
        assert (code, out) == (1, "")
        assert one_error(err) == (
            f"captionkit: error: --output: {output} is the model being exported; choose a new directory"
        )
    assert digest(model_dir) == before
    assert Captioner.from_pretrained(model_dir).caption(sorted(COCO.glob("*.jpg"))[:1], max_new_tokens=3)


@pytest.mark.usefixtures("no_model_loads")
@pytest.mark.parametrize("command", ["int8", "onnx"])
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("dir.jpg", "--output: dir.jpg is not empty; export into a new or empty directory"),
        ("notadir", "--output: notadir is a file, not a directory"),
        ("notadir/export", "--output: notadir/export: notadir is not a directory"),
    ],
)
def test_export_refuses_unusable_outputs_before_loading(places, model_dir, capsys, command, path, message):
    before = digest(places)
    code, out, err = run_cli(["export", command, "--model", model_dir, "--output", path], capsys)
    assert (code, out) == (1, "")
    assert one_error(err) == f"captionkit: error: {message}"
    assert digest(places) == before


def test_export_int8_writes_into_an_existing_empty_directory(places, model_dir, capsys):
    code, _, err = run_cli(["export", "int8", "--model", model_dir, "--output", "emptydir"], capsys)
    assert code == 0, err
    assert (places / "emptydir" / "quantization.json").is_file()
    assert Captioner.from_pretrained(places / "emptydir").caption(sorted(COCO.glob("*.jpg"))[:1], max_new_tokens=3)


# train


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("training started before the paths were checked")

    monkeypatch.setattr("captionkit.training.loop.train", refuse)


@pytest.mark.usefixtures("no_training")
def test_train_refuses_a_file_as_its_run_directory(places, capsys):
    (places / "tiny.yaml").write_text("model:\n  preset: tiny\n")
    code, out, err = run_cli(["train", "tiny.yaml", "--output", "notadir"], capsys)
    assert (code, out) == (1, "")
    assert one_error(err) == "captionkit: error: --output: notadir is a file, not a run directory"
    assert (places / "notadir").read_text() == "a plain file\n"


@pytest.mark.usefixtures("no_training")
def test_train_says_a_directory_given_as_the_recipe_is_one(places, capsys):
    code, out, err = run_cli(["train", "dir.jpg", "--output", "run"], capsys)
    assert (code, out) == (1, "")
    assert one_error(err) == "captionkit: error: dir.jpg: is a directory, not a config file"
    assert not (places / "run").exists()


# Writes that fail after the checks (a full disk, a permission taken away midway) are one line naming the file asked
# for, not the temporary file it was written through.


@pytest.fixture
def refused_rename(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``os.replace`` onto a file named in the returned list fails as a full disk would, naming the staging file (the
    source) as the OS does; every other rename goes through."""
    refused: list[str] = []
    real_replace = os.replace

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if Path(target).name in refused:
            raise OSError(28, "No space left on device", os.fspath(source))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    return refused


@pytest.mark.parametrize(
    ("flag", "path", "refused", "message"),
    [
        ("--output", "x.jsonl", "x.jsonl", "--output: x.jsonl: cannot write (No space left on device)"),
        ("--report", "r.html", "r.html", "--report: r.html: cannot write (No space left on device)"),
    ],
)
def test_compare_names_the_file_it_could_not_write(
    places, photos, model_dir, capsys, refused_rename, flag, path, refused, message
):
    refused_rename.append(refused)
    models = ["--model", f"a={model_dir}", "--model", f"b={model_dir}", "--max-length", "4"]
    code, _, err = run_cli(["compare", photos, *models, flag, path], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == f"captionkit: error: {message}"  # after the table of captions
    assert sorted(p.name for p in places.iterdir()) == ["dir.jpg", "emptydir", "notadir"]  # no staging file left


@pytest.mark.parametrize(
    ("flag", "path", "refused", "message"),
    [
        ("--output", "eval", "metrics.json", "--output: eval/metrics.json: cannot write (No space left on device)"),
        ("--report", "r.html", "r.html", "--report: r.html: cannot write (No space left on device)"),
    ],
)
def test_evaluate_names_the_file_it_could_not_write(
    places, photos, model_dir, capsys, refused_rename, flag, path, refused, message
):
    refused_rename.append(refused)
    data = shutil.copytree(photos, places / "data")
    for photo in data.glob("*.jpg"):
        photo.with_suffix(".txt").write_text("a photo\n")  # a folder with sidecar captions
    code, _, err = run_cli(["evaluate", "--model", model_dir, "--data", data, "--max-length", "4", flag, path], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == f"captionkit: error: {message}"  # after the progress lines
    assert not list(places.rglob(".*.tmp"))
