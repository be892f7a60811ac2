"""Where a run's numbers go: ``metrics.jsonl`` (always), TensorBoard (when installed), a progress line on stderr."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from captionkit.errors import InputError
from captionkit.files import text_lines
from captionkit.jsontext import parse_json

logger = logging.getLogger("captionkit.training")

METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Appends each entry to ``metrics.jsonl`` and, when the ``tensorboard`` extra is installed, to TensorBoard."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.path = run_dir / METRICS_FILE
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        else:
            self._truncate_after(resume_step)
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("TensorBoard logs off: install captionkit[tensorboard] to get them")
            else:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: drop the entries the killed run wrote for them, and
        a line it was killed in the middle of writing."""
        if not self.path.is_file():
            return
        kept = []
        for line in text_lines(self.path.read_text(encoding="utf-8", errors="replace")):
            try:
                entry = parse_json(line, self.path, non_finite=True)
            except InputError:
                continue
            if isinstance(entry, dict) and entry.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, entry: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            for key, value in entry.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, entry["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressLine:
    """A rich progress line on stderr: step, loss, lr, images/s and ETA; silent when disabled."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.start_step = start_step
        self._progress: Any = None
        self._started = time.perf_counter()

    def __enter__(self) -> ProgressLine:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            columns = (
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._progress = Progress(*columns, console=Console(stderr=True), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start_step, stats="")
        return self

    def update(self, step: int, loss: float, lr: float, images_per_second: float) -> None:
        if self._progress is not None:
            stats = f"loss {loss:.4f}  lr {lr:.2e}  {images_per_second:.1f} img/s"
            self._progress.update(self._task, completed=step, stats=stats)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, error, trace)
