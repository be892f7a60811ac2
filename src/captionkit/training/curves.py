"""A PNG of a run's curves, drawn with Pillow (no plotting library in the core install).

One panel per quantity: training loss with validation loss, validation perplexity, validation CIDEr-D; each with
its step range and value range written on the axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

PANELS = (
    ("loss", ("loss", "val_loss")),
    ("perplexity", ("val_perplexity",)),
    ("CIDEr-D", ("val_cider",)),
)
COLOURS = {
    "loss": (31, 119, 180),
    "val_loss": (214, 39, 40),
    "val_perplexity": (44, 160, 44),
    "val_cider": (148, 103, 189),
}
WIDTH, PANEL_HEIGHT, MARGIN = 640, 220, 56


def series(history: Sequence[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(float(e["step"]), float(e[key])) for e in history if isinstance(e.get(key), int | float) and "step" in e]


def draw_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Write the curves of ``history`` (log entries) to ``path``; None when there is nothing to draw."""
    panels = [(title, [k for k in keys if series(history, k)]) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return None
    image = Image.new("RGB", (WIDTH, PANEL_HEIGHT * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for row, (title, keys) in enumerate(panels):
        _panel(draw, font, row * PANEL_HEIGHT, title, {key: series(history, key) for key in keys})
    path = Path(path)
    image.save(path, format="PNG")
    return path


def _panel(draw: ImageDraw.ImageDraw, font: Any, top: int, title: str, lines: dict[str, list[tuple[float, float]]]):
    left, right = MARGIN, WIDTH - 16
    upper, lower = top + 24, top + PANEL_HEIGHT - 28
    points = [p for values in lines.values() for p in values]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:  # a flat line sits mid-panel
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), lower - (y - y0) / (y1 - y0) * (lower - upper)

    draw.rectangle((left, upper, right, lower), outline=(160, 160, 160))
    draw.text((left, top + 6), title, fill="black", font=font)
    x = left + draw.textlength(title, font=font) + 16
    for key in lines:  # the legend: each series' name in its colour
        draw.text((x, top + 6), key, fill=COLOURS.get(key, (0, 0, 0)), font=font)
        x += draw.textlength(key, font=font) + 12
    draw.text((4, upper), f"{y1:.4g}", fill="black", font=font)
    draw.text((4, lower - 10), f"{y0:.4g}", fill="black", font=font)
    draw.text((left, lower + 6), f"step {x0:g}", fill="black", font=font)
    draw.text((right - 70, lower + 6), f"step {x1:g}", fill="black", font=font)
    for key, values in lines.items():
        colour = COLOURS.get(key, (0, 0, 0))
        xy = [at(x, y) for x, y in values]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
