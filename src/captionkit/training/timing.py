"""Where a training step's time goes: data, forward, backward, optimizer.

Measured on the steps that are logged only: on a GPU every lap synchronises with the device (its work is queued,
so a clock read without a sync measures the queueing), and a step that is not logged must not wait for the GPU.
"""

from __future__ import annotations

import time

import torch

PHASES = ("data", "forward", "backward", "optimizer")


class PhaseTimer:
    """Seconds per phase of one step; ``lap(phase)`` books the time since the previous lap to ``phase``."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self._synchronise = enabled and device.type == "cuda"
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._last = self._now() if enabled else 0.0

    def _now(self) -> float:
        if self._synchronise:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, phase: str) -> None:
        if not self.enabled:
            return
        now = self._now()
        self.seconds[phase] += now - self._last
        self._last = now

    def split(self) -> dict[str, float]:
        """The phases' seconds, rounded for the log; empty when the step was not timed."""
        return {phase: round(seconds, 5) for phase, seconds in self.seconds.items()} if self.enabled else {}
