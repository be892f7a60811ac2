"""Small things a new user meets first on the command line: --version, and counts spelled right."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from _helpers import run_cli
from captionkit.cli._common import fail_writing, os_error_line
from captionkit.version import __version__


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["--version"], capsys)
    assert (code, out, err) == (0, f"captionkit {__version__}\n", "")


def test_version_flag_as_a_process() -> None:
    done = subprocess.run([sys.executable, "-m", "captionkit.cli", "--version"], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, f"captionkit {__version__}\n")


def test_os_errors_are_one_line_naming_the_file_asked_for(tmp_path, capsys):
    # A full disk while writing a run directory names the file inside it; a staging file is named as its target.
    inside = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "config.json"))
    assert os_error_line(inside, tmp_path / "run") == f"{tmp_path}/run/config.json: No space left on device"
    staged = OSError(errno.EACCES, "Permission denied", str(tmp_path / ".r.html.77.tmp"))
    with pytest.raises(SystemExit) as exit_info:
        fail_writing(tmp_path / "r.html", staged)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"captionkit: error: {tmp_path}/r.html: cannot write (Permission denied)\n"
    # No file in the error (a library's own OSError): the target, and the error's first line as the reason.
    bare = OSError("disk quota exceeded\n  more detail")
    with pytest.raises(SystemExit):
        fail_writing("out.jsonl", bare, "--output")
    assert capsys.readouterr().err == "captionkit: error: --output: out.jsonl: cannot write (disk quota exceeded)\n"


@pytest.mark.parametrize("command", [["score"], ["data", "check"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path, command: list[str]) -> None:
    """`captionkit score ... | head -c 10`: the score command (run without typer) ended in a BrokenPipeError
    traceback; the typer commands exit 1 without one, and so does score now."""
    (tmp_path / "refs.json").write_text('{"a.jpg": ["a red square", "a square"]}')
    (tmp_path / "cands.json").write_text('{"a.jpg": "a red square"}')
    (tmp_path / "a.csv").write_text("image,caption\na.jpg,a red square\n")
    # BLEU alone: METEOR's first run says on stderr that it builds its data cache.
    score = ["--refs", "refs.json", "--cands", "cands.json", "--metrics", "BLEU"]
    arguments = {"score": score, "data": ["a.csv", "--no-images"]}
    child = subprocess.Popen(
        [sys.executable, "-m", "captionkit.cli", *command, *arguments[command[0]]],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    child.stdout.close()  # the reader is gone before the first line is written
    _, err = child.communicate(timeout=120)
    assert (child.returncode, err) == (1, "")


def test_an_error_naming_a_file_with_control_characters_stays_one_line(tmp_path, capsys):
    """A file name with a newline split the error in two lines, and one with ESC could recolour the terminal."""
    missing = tmp_path / "no\nsuch\x1b[31m.jpg"
    code, out, err = run_cli(["caption", str(missing), "--model", str(tmp_path)], capsys)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "\x1b" not in err
    assert err.startswith(f"captionkit: error: {tmp_path}/no\\nsuch\\x1b[31m.jpg: ")


def test_a_file_named_like_an_option_is_pointed_to_its_way_in(tmp_path, capsys, monkeypatch):
    """``caption -dash.jpg`` said "No such option: -d" and no more: click reads it as the options -d -a -s ..."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-dash.jpg").write_bytes(b"")
    code, out, err = run_cli(["caption", "-dash.jpg"], capsys)
    assert (code, out) == (1, "")
    hint = "'-dash.jpg' is a file: write ./-dash.jpg"
    assert err == f"captionkit: error: No such option: -d; {hint} (see 'captionkit caption --help')\n"
    code, _, err = run_cli(["caption", "-x"], capsys)
    assert (code, err) == (1, "captionkit: error: No such option: -x (see 'captionkit caption --help')\n")
