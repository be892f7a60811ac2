"""SIGTERM / SIGINT during training: save a checkpoint and return, instead of dying mid-step."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopSignal:
    """SIGTERM / SIGINT ask the loop to save a checkpoint and return; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training where no checkpoint is saved first (while the run is set up, or at a second Ctrl-C);
    its message says what was being done and what was kept, for the CLI's one line."""
