"""training/curves.py: matplotlib panels with log axes for loss and perplexity, and the note without matplotlib."""

from __future__ import annotations

import logging
import math
import sys

from PIL import Image

from captionkit.training.curves import PANEL_HEIGHT, WIDTH, curves_figure, draw_curves

HISTORY = [
    {"step": step, "loss": 8.0 * 0.5**step, "lr": 1e-3}
    | ({"val_loss": 6.0 * 0.6**step, "val_perplexity": math.exp(6.0 * 0.6**step)} if step % 5 == 0 else {})
    for step in range(1, 41)
]


def test_loss_and_perplexity_panels_are_on_log_axes_with_labelled_ticks():
    figure = curves_figure(HISTORY)
    assert figure is not None
    loss, perplexity = figure.axes
    assert [loss.get_title(loc="left"), perplexity.get_title(loc="left")] == ["loss", "perplexity"]
    assert loss.get_yscale() == perplexity.get_yscale() == "log"
    assert [line.get_label() for line in loss.get_lines()] == ["loss", "val_loss"]
    assert len(loss.get_lines()[0].get_xdata()) == 40 and len(loss.get_lines()[1].get_xdata()) == 8
    figure.canvas.draw()
    steps = [t.get_text() for t in loss.get_xticklabels() if t.get_text()]
    assert len(steps) >= 4  # more than the first and last step
    low, high = loss.get_ylim()
    assert low <= 8.0 * 0.5**40 and high >= 8.0 * 0.5


def test_a_negative_loss_stays_on_a_linear_axis():
    figure = curves_figure([{"step": 1, "loss": -0.5}, {"step": 2, "loss": 0.25}])
    assert figure is not None and [a.get_yscale() for a in figure.axes] == ["linear"]


def test_draw_curves_writes_a_png_of_one_panel_height_per_quantity(tmp_path):
    path = draw_curves(HISTORY, tmp_path / "curves.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (WIDTH, 2 * PANEL_HEIGHT)
    assert draw_curves([{"step": 1, "lr": 1e-3}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_without_matplotlib_no_png_and_one_note(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if matplotlib were absent
    with caplog.at_level(logging.INFO, logger="captionkit.training"):
        assert draw_curves(HISTORY, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
    assert caplog.messages == ["curves.png not drawn: install captionkit[plots] (matplotlib) to get it"]
