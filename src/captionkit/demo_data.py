"""How many scenes ``captionkit demo`` draws, in a module of its own: the command line reads its defaults without
importing the demo (and the data readers, Pillow, YAML) at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from captionkit.cpus import usable_cpus


@dataclass(frozen=True)
class DemoData:
    """How many scenes the demo draws (the recipe's ``train.steps`` sets how long it trains)."""

    num_train: int = 20000
    num_val: int = 200
    num_test: int = 500
    image_size: int = 32
    seed: int = 0
    # 0: test scenes are new renderings (new positions, sizes, shades) of descriptions that may occur in training.
    # > 0: that share of two-object descriptions is held out of training (a compositional test): every two-object
    # test caption is one the model never saw.
    held_out_fraction: float = 0.1
    # Canonical captions in reading order, objects anywhere (see SceneOptions).
    order: str = "reading"
    layout: str = "free"
    # Boxes made of whole cells of an 8 x 8 grid: at 32 px a cell is one 4 px ViT patch, so every patch sees either
    # the inside of one shape or one clean edge of it. Shape identity is learned in a few hundred steps this way.
    grid: int = 8
    # Processes drawing the scenes (0: in this process): all but one of the CPUs, at most 16, and none when that
    # leaves fewer than 2 (one worker only adds its start-up). The files are the same whatever the number.
    workers: int = field(default_factory=lambda: _drawing_workers())


def _drawing_workers() -> int:
    cpus = usable_cpus()
    workers = min(16, cpus - 1)
    return workers if workers >= 2 else 0
