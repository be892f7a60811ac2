"""Helpers shared by the CLI commands: one-line errors and exit codes."""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_INPUT_ERROR = 1
EXIT_PARTIAL = 2


def fail(message: str) -> NoReturn:
    """Print ``captionkit: error: MESSAGE`` on stderr and exit 1."""
    print(f"captionkit: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_INPUT_ERROR)
