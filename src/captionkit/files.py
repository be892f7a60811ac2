"""File modes of what captionkit writes: the ones a plain ``open`` gives, whatever library wrote the file."""

from __future__ import annotations

import os
from pathlib import Path


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
