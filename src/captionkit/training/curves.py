"""A PNG of a run's curves, drawn with matplotlib (the optional ``plots`` extra).

One panel per quantity: training and validation loss, training and validation perplexity, on log axes (their values
shrink by orders of magnitude), validation CIDEr-D on a linear one; every axis with labelled ticks and a grid.
Without matplotlib no PNG is written and one log line says how to get it: ``metrics.jsonl`` holds the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger("captionkit.training")

PANELS = (
    ("loss", ("loss", "val_loss")),
    ("perplexity", ("perplexity", "val_perplexity")),
    ("CIDEr-D", ("val_cider",)),
)
LOG_PANELS = frozenset({"loss", "perplexity"})
COLOURS = {
    "loss": "tab:blue",
    "val_loss": "tab:red",
    "perplexity": "tab:orange",
    "val_perplexity": "tab:green",
    "val_cider": "tab:purple",
}
WIDTH, PANEL_HEIGHT, DPI = 800, 260, 100  # pixels of the PNG: WIDTH x PANEL_HEIGHT per panel


def series(history: Sequence[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(float(e["step"]), float(e[key])) for e in history if isinstance(e.get(key), int | float) and "step" in e]


def curves_figure(history: Sequence[dict[str, Any]]) -> Figure | None:
    """The curves of ``history`` (log entries) as a figure; None when there is nothing to draw."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [(title, [k for k in keys if series(history, k)]) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return None
    figure = Figure(figsize=(WIDTH / DPI, PANEL_HEIGHT * len(panels) / DPI), dpi=DPI, layout="constrained")
    for axes, (title, keys) in zip(figure.subplots(len(panels), 1, squeeze=False)[:, 0], panels, strict=True):
        lines = {key: series(history, key) for key in keys}
        for key, points in lines.items():
            steps, values = zip(*points, strict=True)
            marker = "o" if len(points) < 30 else None
            axes.plot(steps, values, marker=marker, markersize=3, label=key, color=COLOURS.get(key))
        # A log axis needs positive values: SCST's loss (a negative reward) stays on a linear one.
        if title in LOG_PANELS and all(v > 0 for points in lines.values() for _, v in points):
            axes.set_yscale("log")
        axes.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        axes.set_title(title, loc="left", fontsize=10)
        axes.set_xlabel("step")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def draw_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Write the curves of ``history`` to ``path``; None when there is nothing to draw or no matplotlib."""
    try:
        figure = curves_figure(history)
    except ImportError:
        logger.info("%s not drawn: install captionkit[plots] (matplotlib) to get it", Path(path).name)
        return None
    if figure is None:
        return None
    path = Path(path)
    figure.savefig(path, format="png")
    return path
