"""How captionkit reads and writes whole text files and splits them into lines.

Reads: :func:`read_text` is the one way a text input is read: UTF-8 (a byte-order mark allowed), and every
failure one :class:`~captionkit.errors.InputError` naming the file.

Writes: a file written whole goes to a temporary sibling first and is renamed over the target, so a crash or a
full disk leaves the old file or the new one, never a torn one. (Files appended record by record, such as JSONL
and CSV results, are append-safe instead: see :mod:`captionkit.jobs.outputs`.)

Lines: a text file's lines end at ``\\n``, ``\\r\\n`` or ``\\r``. ``str.splitlines()`` also breaks at ``\\f``,
``\\x1c``-``\\x1e``, ``\\x85``, ``\\u2028`` and ``\\u2029``, which are ordinary characters inside a caption or a
file name, so files are split with :func:`text_lines` instead.

Folders: :func:`folder_files` is the one walk of a folder for the files it holds (links to folders followed, once
each; folders that cannot be listed given back, not skipped).

Modes: weights and other files get the mode a plain ``open`` gives (0666 less the umask), whatever library wrote
them (:func:`honour_umask`).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from captionkit.errors import InputError, first_line

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# Excel's "Unicode Text" and PowerShell's default: decoded as UTF-8 it would read as garbage from its first byte.
UTF16_REASON = "UTF-16 text: save it as UTF-8"


def is_utf16(head: bytes) -> bool:
    """Whether bytes start with a UTF-16 byte-order mark."""
    return head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


def read_text(path: Path) -> str:
    """A UTF-8 file's text (a byte-order mark is allowed); a missing, unreadable, non-UTF-8 or empty file is an
    :class:`InputError` naming it."""
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InputError(path, "not a file") from None
    except OSError as error:
        raise InputError(path, f"cannot read ({error.strerror or error})") from None
    if is_utf16(data):
        raise InputError(path, UTF16_REASON)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(path, f"not UTF-8 text ({not_utf8_at(data, error.start)})") from None
    if not text.strip():
        raise InputError(path, "empty file")
    return text


def not_utf8_at(data: bytes, at: int) -> str:
    """Where ``data``'s first byte that is not UTF-8 (at offset ``at``) is: the offset, and past the first line the
    line and column too, which an editor goes to (a Latin-1 caption file's é on line 4012)."""
    where = f"byte 0x{data[at]:02x} at offset {at}"
    line_start = max(data.rfind(b"\n", 0, at), data.rfind(b"\r", 0, at)) + 1
    if line_start == 0:
        return where
    line = len(text_lines(data[:line_start].decode("utf-8-sig"))) + 1
    column = len(data[line_start:at].decode("utf-8")) + 1  # in characters, as an editor counts (é is 2 bytes)
    return f"{where}: line {line}, column {column}"


def text_lines(text: str) -> list[str]:
    """``text``'s lines without their line breaks (``\\n``, ``\\r\\n`` or ``\\r`` only); no empty last line."""
    lines = _LINE_BREAK.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def write_atomic(
    path: str | os.PathLike[str], data: str | bytes, encoding: str = "utf-8", errors: str = "strict"
) -> Path:
    """Write ``data`` to ``path`` whole (see :func:`atomic_writer`). Returns ``path``."""
    path = Path(path)
    payload = data.encode(encoding, errors) if isinstance(data, str) else data
    with atomic_writer(path) as handle:
        handle.write(payload)
    return path


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """A handle (``open(..., mode, encoding=...)``) on ``.NAME.PID.tmp`` beside ``path``, whose file is flushed to
    disk and renamed over ``path`` when the block ends; an error in the block leaves ``path`` as it was.

    The temporary file is opened like any other (mode 0666 less the umask), so the result has the permissions a
    plain write would give it. A ``path`` that is a link is written through, as ``open`` writes: the file it leads to
    is replaced and the link stays (it was replaced by a plain file, while an appending run wrote through it).
    """
    path = write_target(path)
    staging = _staging_path(path)
    try:
        with staging.open(mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_target(path: str | os.PathLike[str]) -> Path:
    """The file a whole-file write to ``path`` replaces: ``path``, or the file a link there leads to. Its staging file
    is that file's sibling, where a look for those a killed run left must search too."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _staging_path(path: Path) -> Path:
    """The temporary sibling :func:`atomic_writer` writes ``path`` through: ``.NAME.PID.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


_STAGING_NAME = re.compile(r"\.(?P<name>.+)\.\d+\.tmp")


def another_process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process other than this one: the owner of a staging file or directory named
    with it is still writing it. A number we may not ask about (another user's process) counts as alive, so that
    its files are left alone; this process's own number does not (a killed run's number given to this process: the
    staging it left is no write of ours)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


@dataclass
class FolderFiles:
    """What a walk of a folder found: the files named with one of its suffixes, sorted, and the folders under it that
    could not be listed (their files unknown), sorted."""

    files: list[Path] = field(default_factory=list)
    unlisted: list[Path] = field(default_factory=list)


def folder_files(folder: Path, suffixes: Collection[str]) -> FolderFiles:
    """The entries under ``folder`` (at any depth) named with one of ``suffixes`` (lower case) that are no folder:
    regular files, and also those that cannot be read (a broken or looping link, one ``stat`` refuses), so that a
    caller can say why each fails rather than lose it.

    A link to a folder is followed (photos are often gathered by linking other disks' folders in), but a folder is
    walked once, whatever the number of ways to it: a link to a folder within the walk, or a loop, adds nothing, and a
    link to a folder that holds ``folder`` (``up -> ..``, ``/``) is not followed, or the walk would take in files
    outside ``folder``. The folders themselves come first, so a file is named by its path without links where it has
    one, and of several links to one folder the first in path order names its files, whatever order the system
    lists a folder in."""
    found = FolderFiles()
    root = Path(os.path.realpath(folder))
    walked: set[tuple[int, int]] = set()
    folders, linked = [folder], []
    while folders or linked:
        directory = folders.pop() if folders else linked.pop(linked.index(min(linked)))
        identity = _folder_identity(directory)
        if identity in walked:
            continue
        walked.add(identity)
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            found.unlisted.append(directory)
            continue
        for entry in entries:
            path = directory / entry.name
            if not _is_folder(entry):
                if path.suffix.lower() in suffixes:
                    found.files.append(path)
            elif not entry.is_symlink():
                folders.append(path)
            elif not root.is_relative_to(os.path.realpath(path)):
                linked.append(path)
    found.files.sort()
    found.unlisted.sort()
    return found


def _folder_identity(directory: Path) -> tuple[int, int]:
    """The folder a path leads to (through links), as the system knows it; one that cannot be looked at is its own."""
    try:
        info = directory.stat()
    except OSError:
        return (-1, hash(directory))
    return (info.st_dev, info.st_ino)


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` is a folder (followed if a link); an entry that cannot be looked at is none."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def written_path(path: str | os.PathLike[str]) -> Path:
    """The file a write to ``path`` was for: ``path`` itself, or the target of an :func:`atomic_writer` staging
    file, so that an error names the file the user asked for, not ``.NAME.PID.tmp``."""
    path = Path(path)
    staged = _STAGING_NAME.fullmatch(path.name)
    return path.with_name(staged["name"]) if staged else path


def cannot_write(error: OSError) -> str:
    """The one wording of a failed write, for an error that names the file before it: ``cannot write (REASON)``."""
    return f"cannot write ({error.strerror or first_line(error)})"


def new_file_mode(directory: Path) -> int:
    """The permission bits a new file gets in ``directory``: 0666 less the process's umask (read without changing
    the umask, which other threads share)."""
    probe = directory / f".mode-probe-{os.getpid()}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink()


def honour_umask(directory: Path) -> None:
    """Give the weights (``*.safetensors``) in ``directory`` the mode a new file gets there. safetensors writes
    through a private temporary file (mode 0600), which would lock other users out of a model whose other files
    they can read."""
    mode = new_file_mode(directory)
    for path in directory.glob("*.safetensors"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def check_output_file(path: Path, flag: str) -> None:
    """Refuse, before any work is done, a file path ``flag`` names that could not be written: a directory, a path
    under a file, or one in a directory this process may not write in. Raises an :class:`InputError` naming
    ``flag``; a missing parent directory is fine (commands create it)."""
    if path.is_dir():
        raise InputError(flag, f"{path} is a directory")
    if _is_special_file(path):
        # Outputs are written beside and renamed over: over /dev/null or /dev/stdout that replaces the device (as
        # root, for every program on the machine), over a FIFO the reader never gets a byte.
        raise InputError(flag, f"{path} is not a regular file (a device, FIFO or socket); name a file")
    if os.path.lexists(path) and not os.access(path, os.W_OK):
        raise InputError(flag, f"{path} is not writable")
    _check_creatable_in(path, flag)


def _is_special_file(path: Path) -> bool:
    try:
        mode = path.stat().st_mode  # through links: /dev/stdout is one
    except OSError:  # missing, or a dangling link: written as a new file
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output_dir(path: Path, flag: str, noun: str = "directory") -> None:
    """Refuse, before any work is done, a directory path ``flag`` names that could not be written: an existing file,
    a path under a file, or one this process may not write in; ``noun`` says what the directory is for (``run
    directory``). Raises an :class:`InputError` naming ``flag``; a directory yet to be made is fine."""
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(flag, f"{path} is a file, not a {noun}")
    if path.is_dir():
        _check_writable(path, path, flag)
        return
    _check_creatable_in(path, flag)


def same_file(path: str | os.PathLike[str], other: str | os.PathLike[str]) -> bool:
    """Whether both name one existing file (a missing one, or a member path inside a shard, names none)."""
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def also_an_input(output: Path, source: Path) -> str:
    """Why an output that is the input ``source`` is refused (naming the input when it is spelt otherwise)."""
    named = "" if str(source) == str(output) else f" ({source})"
    return f"{output} is also an input{named}; write the results to a new file"


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a file name that is not reaches Python with lone surrogates (``caf\\udce9.jpg``), shown
    as that escape, as the JSON outputs write it, where a page, a terminal or a message must hold it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: str) -> str:
    """``text`` with its control characters escaped as Python writes them (``\\n``, ``\\x1b``), for a message or
    a report line that names a file: a name's newline split a one-line error in two, and its ESC or CSI would drive
    the terminal. Tabs stay: they keep a line one line."""
    return text.translate(_ESCAPED_CONTROLS)


_ESCAPED_CONTROLS = {code: repr(chr(code))[1:-1] for code in (*range(0x20), *range(0x7F, 0xA0)) if code != ord("\t")}


def check_model_dir(path: Path, flag: str, noun: str = "directory") -> None:
    """:func:`check_output_dir` for a directory a model is saved in (a run, an export, the demo's): its path must
    also be valid UTF-8, where the tokenizers library can save the model's tokenizer (a name that is not reaches
    Python with lone surrogates, and would fail at the first save, after the training)."""
    check_output_dir(path, flag, noun)
    absolute = str(path.absolute())
    shown = printable(absolute)
    if shown != absolute:
        raise InputError(flag, f"{shown}: the path is not valid UTF-8, and the model's tokenizer cannot be saved there")


def _check_creatable_in(path: Path, flag: str) -> None:
    """``path`` (not there yet, or a file to replace) can be made: its nearest existing ancestor is a directory
    this process may write in. Writing would otherwise fail only after the work, with an OSError."""
    for ancestor in path.parents:
        # lexists: a dangling link is there (mkdir would fail on it) but is no directory.
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise InputError(flag, f"{path}: {ancestor} is not a directory")
            _check_writable(ancestor, path, flag)
            return


def _check_writable(directory: Path, path: Path, flag: str) -> None:
    """New files can be made in ``directory`` (write and search permission), where ``path`` is to be written."""
    if not os.access(directory, os.W_OK | os.X_OK):
        where = f"{path}" if directory == path else f"{path}: {directory}"
        raise InputError(flag, f"{where} is not writable")


# http://, https://, s3://, gs://, ...: two letters at least, since C://photos/cat.jpg is a Windows drive's path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# What ``Path`` makes of one: the double slash collapsed (``https:/host/cat.jpg``).
_URL_AS_PATH = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL (``https://``, ``s3://``, ...) and no local path: ``Path`` would read it as a path,
    mangled (``https:/host/cat.jpg``), and the file would be "missing" where it was never looked for."""
    return bool(_URL.match(text)) and not os.path.exists(text)


def url_of(path: Path) -> str | None:
    """The URL a ``Path`` was made of (``Path("https://host/x")`` is ``https:/host/x``), as it was written; None for a
    path that is no URL, or names a local file."""
    text = str(path)
    if _URL_AS_PATH.match(text) is None or path.exists():
        return None
    return _URL_AS_PATH.sub(r"\1://", text, count=1)
