"""_train_child.py, with each process appending what it drew to OUTPUT/consumed-rank{RANK}.jsonl: one line per
optimizer step, ``{"step": S, "ids": [...]}``, the image ids of the step's micro-batches as the loop received them.

Usage: as _train_child.py (under torchrun for several ranks).
"""

from __future__ import annotations

import json

import _train_child
from captionkit.data.dataset import Batch
from captionkit.training.run import Run

_draw = Run.draw_micro_batches


def _recorded(run: Run) -> list[Batch]:
    micro = _draw(run)
    ids = [image_id for batch in micro for image_id in batch.image_ids]
    with (run.run_dir / f"consumed-rank{run.parallel.rank}.jsonl").open("a", encoding="utf-8") as log:
        log.write(json.dumps({"step": run.state.step, "ids": ids}) + "\n")
    return micro


if __name__ == "__main__":
    Run.draw_micro_batches = _recorded  # type: ignore[method-assign]
    _train_child.main()
