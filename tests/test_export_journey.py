"""Exporting as a user does: a failed or stopped export leaves nothing half-written (a full disk is one line), a
family ONNX does not cover is refused before its weights load, an export written again keeps nothing of the earlier
one, a checkpoint stored in bf16 exports as fp32, and the help and the last line say which families each kind takes,
where the export goes and how to caption with it."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from _data import real_photos
from _helpers import FAMILIES, run_cli, save_tiny_model
from captionkit.api import Captioner
from captionkit.errors import InputError
from captionkit.export.int8 import export_int8
from captionkit.export.onnx import export_onnx
from captionkit.trained_on import TRAIN_CONFIG

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTO = real_photos(1)[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("journey") / "fp32")


def _stop(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt  # Ctrl-C, or any failure, in the middle of writing the export


@pytest.mark.parametrize(("kind", "where"), [("int8", "int8.save_int8_weights"), ("onnx", "onnx._export")])
@pytest.mark.parametrize("existing", [False, True])
def test_a_stopped_export_leaves_nothing_half_written(
    kind: str,
    where: str,
    existing: bool,
    source: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """int8 wrote an fp32 checkpoint and quantized it after: stopped between, the directory loaded as the fp32 model,
    silently, and exporting into it again was refused (not empty). ONNX left the tokenizer and the first graphs."""
    output = tmp_path / "export"
    if existing:
        output.mkdir()  # an empty directory the user made for it
    export = {"int8": export_int8, "onnx": export_onnx}[kind]
    with monkeypatch.context() as patched:
        patched.setattr(f"captionkit.export.{where}", _stop)
        with pytest.raises(KeyboardInterrupt):
            export(source, output)
    assert sorted(path.name for path in tmp_path.iterdir()) == (["export"] if existing else [])
    assert not existing or list(output.iterdir()) == []
    code, _, err = run_cli(["export", kind, "--model", source, "--output", output], capsys)
    assert code == 0, err
    assert Captioner.from_pretrained(output).export == {"int8": "int8", "onnx": "ONNX"}[kind]


@pytest.mark.parametrize(("kind", "where"), [("int8", "int8.save_int8_weights"), ("onnx", "onnx._export")])
def test_ctrl_c_says_no_export_was_written(
    kind: str,
    where: str,
    source: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exit 130 as before, and a word on what was lost, as caption and compare say (it was a silent exit)."""
    monkeypatch.setattr(f"captionkit.export.{where}", _stop)
    output = tmp_path / "export"
    code, out, err = run_cli(["export", kind, "--model", source, "--output", output], capsys)
    assert (code, out, err.strip().splitlines()) == (
        130,
        "",
        [f"captionkit: interrupted: no export written to {output}"],
    )
    assert list(tmp_path.iterdir()) == []


# A child process exporting that stops where the weights or graphs are written (the staging directory made and
# partly filled), says so, and waits there to be killed.
_STALLED_EXPORT = """
import sys, time
from captionkit.export import int8, onnx

def stall(*args, **kwargs):
    print("writing", flush=True)
    time.sleep(600)

kind, source, output = sys.argv[1:]
if kind == "int8":
    int8.save_int8_weights = stall
    int8.export_int8(source, output)
else:
    onnx._export = stall
    onnx.export_onnx(source, output)
"""


def _stalled_export(kind: str, source: Path, output: Path) -> subprocess.Popen[str]:
    """An export of ``source`` to ``output`` in another process, stopped midway with its staging directory there."""
    child = subprocess.Popen(
        [sys.executable, "-c", _STALLED_EXPORT, kind, str(source), str(output)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert child.stdout is not None
    if child.stdout.readline() != "writing\n":
        child.kill()
        pytest.fail(f"the export in a child process did not reach its writes (exit {child.wait()})")
    return child


def _hidden(tmp_path: Path) -> list[Path]:
    """The staging directories in ``tmp_path`` or the export directory within."""
    return sorted(path for path in [*tmp_path.iterdir(), *tmp_path.glob("export/*")] if path.name.startswith("."))


@pytest.mark.parametrize(
    ("kind", "how"), [("int8", signal.SIGKILL), ("onnx", signal.SIGTERM)], ids=["int8-SIGKILL", "onnx-SIGTERM"]
)
# Each kind and signal once in the fast suite (about 5 s a case); the other two cases in the slow one.
@pytest.mark.parametrize("existing", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_next_export_removes_what_an_export_killed_outright_left(
    kind: str, how: signal.Signals, existing: bool, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed outright, an export runs no cleanup and left its hidden staging directory: inside the (empty) directory
    the user made for it, whose next export was refused as "not empty" for our own leftover; beside it otherwise,
    where each killed export left weights for good."""
    output = tmp_path / "export"
    if existing:
        output.mkdir()
    child = _stalled_export(kind, source, output)
    child.send_signal(how)
    assert child.wait(timeout=60) == -how
    [left] = _hidden(tmp_path)
    assert left.parent == (output if existing else tmp_path)
    code, _, err = run_cli(["export", kind, "--model", source, "--output", output], capsys)
    assert code == 0, err
    assert err.splitlines()[0] == f"{output}: removed {left.name}, left by an export that was killed while writing it"
    assert _hidden(tmp_path) == []
    assert Captioner.from_pretrained(output).export == {"int8": "int8", "onnx": "ONNX"}[kind]


@pytest.mark.parametrize("existing", [False, True])
def test_an_export_leaves_the_staging_of_one_still_running_alone(
    existing: bool, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another export writing the same directory now keeps its staging directory: into a directory it is writing in,
    the second export is refused; beside it, the second goes ahead."""
    output = tmp_path / "export"
    if existing:
        output.mkdir()
    child = _stalled_export("int8", source, output)
    try:
        running = _hidden(tmp_path)
        code, _, err = run_cli(["export", "int8", "--model", source, "--output", output], capsys)
        assert "removed" not in err
        if existing:
            assert err.strip().splitlines() == [
                f"captionkit: error: --output: {output} is not empty; export into a new or empty directory"
            ]
        assert code == (1 if existing else 0), err
        assert set(running) <= set(_hidden(tmp_path)) and len(running) == 1
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def _full(*args: object, **kwargs: object) -> None:
    path = next(arg for arg in args if isinstance(arg, Path))  # the file being written
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize(("kind", "where"), [("int8", "int8.save_int8_weights"), ("onnx", "onnx._export")])
def test_a_full_disk_is_one_line_naming_the_output(
    kind: str,
    where: str,
    source: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write failing midway was a traceback; the file it named was a staging path inside."""
    monkeypatch.setattr(f"captionkit.export.{where}", _full)
    output = tmp_path / "export"
    code, out, err = run_cli(["export", kind, "--model", source, "--output", output], capsys)
    assert (code, out, err.strip().splitlines()) == (
        1,
        "",
        [f"captionkit: error: --output: {output}: cannot write (No space left on device)"],
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", [family for family in FAMILIES if family != "vit-gpt2"])
def test_onnx_refuses_another_family_in_one_line_before_loading_it(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal came after the whole model loaded (a BLIP checkpoint's weights take gigabytes), and after asking
    for the onnx package."""
    from captionkit.parts import CaptionerParts

    model = save_tiny_model(tmp_path / family, family)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before its family was checked")

    monkeypatch.setattr(CaptionerParts, "load", never)
    monkeypatch.setitem(sys.modules, "onnx", None)  # without onnx too: installing it would not help
    code, out, err = run_cli(["export", "onnx", "--model", model, "--output", tmp_path / "onnx"], capsys)
    assert (code, out, err.strip().splitlines()) == (
        1,
        "",
        [f"captionkit: error: {model}: is a {family} model; ONNX export supports vit-gpt2"],
    )
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("kind", ["int8", "onnx"])
def test_an_export_written_again_keeps_nothing_of_the_earlier_one(kind: str, source: Path, tmp_path: Path) -> None:
    """From Python an export may be written again over one of its kind: the earlier model's training settings
    (which say the styles it writes) stayed beside the new model's files."""
    trained = save_tiny_model(tmp_path / "trained", seed=1)
    (trained / TRAIN_CONFIG).write_text(json.dumps({"data": {"styles": ["positive", "negative"]}}))
    export = {"int8": export_int8, "onnx": export_onnx}[kind]
    export(trained, tmp_path / "export")
    assert (tmp_path / "export" / TRAIN_CONFIG).is_file()
    (tmp_path / "export" / "notes.txt").write_text("mine")
    export(source, tmp_path / "export")
    names = {path.name for path in (tmp_path / "export").iterdir()}
    assert TRAIN_CONFIG not in names and "notes.txt" in names
    assert not any(name.startswith(".") for name in names)  # no staging directory left
    fresh = tmp_path / "fresh"
    export(source, fresh)
    assert names - {"notes.txt"} == {path.name for path in fresh.iterdir()}


@pytest.mark.parametrize("kind", ["int8", "onnx"])
def test_the_export_functions_refuse_a_file_as_output(kind: str, source: Path, tmp_path: Path) -> None:
    """From Python (the CLI checks --output first): refused before any work, not after it with NotADirectoryError
    (int8 failed with FileExistsError after loading the model)."""
    (tmp_path / "a file").write_text("mine")
    export = {"int8": export_int8, "onnx": export_onnx}[kind]
    with pytest.raises(InputError) as refused:
        export(source, tmp_path / "a file")
    assert str(refused.value) == f"{tmp_path / 'a file'}: is a file, not a directory"
    assert (tmp_path / "a file").read_text() == "mine"
    assert [path.name for path in tmp_path.iterdir()] == ["a file"]


def _help(*names: str) -> str:
    """The help of ``export`` (or a subcommand): its text and its options' help, in one line."""
    from captionkit.cli.export import app

    command = get_command(app)
    for name in names:
        command = command.commands[name]  # type: ignore[attr-defined]
    texts = [command.help or "", *(getattr(param, "help", None) or "" for param in command.params)]
    return " ".join(" ".join(texts).split())


def test_the_help_says_which_families_each_kind_takes_and_where_it_writes() -> None:
    group = _help()
    assert "int8 (dynamic quantization; every family)" in group and "ONNX (vit-gpt2 only)" in group
    assert "caption --model DIR" in group
    for kind in ("int8", "onnx"):
        assert "A new or empty directory, not the model's own." in _help(kind)
    assert "a vit-gpt2 model (others: int8)" in _help("onnx")
    assert "captions equal to PyTorch's in the tests" in _help("onnx")
    assert "Its captions are mostly, not always, the fp32 model's" in _help("int8")


@pytest.mark.parametrize("kind", ["int8", "onnx"])
def test_the_export_says_how_to_caption_with_it(
    kind: str, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It pointed ONNX users at a Python method (Captioner.from_onnx), and int8 users nowhere."""
    output = tmp_path / kind
    code, out, err = run_cli(["export", kind, "--model", source, "--output", output], capsys)
    assert code == 0 and json.loads(out)
    assert err.strip().splitlines()[-1].endswith(f"; caption with: captionkit caption IMAGES --model {output}")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_stored_in_bf16_exports_as_its_fp32_reading(family: str, tmp_path: Path) -> None:
    """A checkpoint saved in bf16 (``Captioner.from_pretrained(..., dtype="bf16").save_pretrained``, or a hub model
    stored in half precision) was exported in bf16: the int8 export failed to load ("dtype bfloat16, expected
    float32") and the ONNX exporter failed with a traceback. Both export what the checkpoint reads as in fp32."""
    model = save_tiny_model(tmp_path / "fp32", family)
    Captioner.from_pretrained(model, device="cpu", dtype="bf16").save_pretrained(tmp_path / "bf16")
    Captioner.from_pretrained(tmp_path / "bf16", device="cpu", dtype="fp32").save_pretrained(tmp_path / "widened")
    exports = [(export_int8, "int8")] + ([(export_onnx, "onnx")] if family == "vit-gpt2" else [])
    for export, kind in exports:
        captions = []
        for name in ("bf16", "widened"):
            export(tmp_path / name, tmp_path / f"{name}-{kind}")
            found = Captioner.from_pretrained(tmp_path / f"{name}-{kind}").caption(PHOTO, num_beams=2, max_new_tokens=6)
            captions.append(found[0].captions[0].token_ids)
        assert captions[0] == captions[1] and captions[0]
