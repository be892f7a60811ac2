"""Built-in synthetic scenes: small seeded images of 1-2 coloured shapes with exact reference captions.

A :class:`SceneSpec` says what a scene shows (each object's size, colour and shape and, for two objects, the
relation of the first to the second); a :class:`Scene` adds how it is drawn (box and shade of each object).
Everything is a pure function of the seed, so a data set can be rebuilt anywhere.

Captions. The canonical caption comes first, in one fixed word order: objects are named in precedence order
(large before small, then circle, square, triangle, then the colour order of :data:`COLOURS`), each as
``a <size> <colour> <shape>``, joined by the relation of the first to the second::

    a large red circle left of a small blue square

The other neutral references paraphrase it (the mirrored relation, ``to the left of``, ``big``/``little``,
``there is``). Each neutral caption has one positive and one negative version, made by putting a sentiment
adjective from :data:`POSITIVE_WORDS` / :data:`NEGATIVE_WORDS` before the first object
(``a lovely large red circle ...``).

What "unseen" means for the held-out splits. Every val/test scene is a fresh rendering (positions, sizes and
shades drawn from the split's own random stream). On top of that, two-object descriptions (canonical captions)
are partitioned by a hash into train / val / test: no two-object description of val or test is in train.
Every single object (size, colour, shape) does occur in train: the held-out scenes test new combinations of
known objects and relations, not unknown words. The few one-object descriptions are shared by all splits. The
partition depends only on ``partition_seed``, not on the generation seed, so data sets made with different
seeds agree on it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw

from captionkit.data.records import CaptionRecord, write_jsonl

RGB = tuple[int, int, int]

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 130, 20),
}
DEFAULT_COLOURS = ("red", "green", "blue", "yellow", "purple")
SIZES = ("large", "small")
RELATIONS = ("left of", "right of", "above", "below")
SPLITS = ("train", "val", "test")
# Drawings per worker handed to the pool at a time (see write_synthetic_dataset), in chunks of an eighth.
DRAWING_BATCH = 64
ORDERS = ("precedence", "reading")
LAYOUTS = ("free", "opposite")

POSITIVE_WORDS = ("lovely", "beautiful", "cheerful", "pretty", "delightful")
NEGATIVE_WORDS = ("ugly", "dull", "gloomy", "awful", "dreary")

BACKGROUND: RGB = (240, 240, 240)
SIZE_FRACTION = {"large": 0.40, "small": 0.26}  # side of the object's box as a fraction of the image side
SIZE_JITTER = 0.08
COLOUR_JITTER = 16
MARGIN = 0.02
MIN_GAP = 0.03
# Sides, in cells, of objects on a grid (SceneOptions.grid): whole cells, so each patch of a ViT whose patch is
# one cell sees a fixed part of a shape; seven cells fit two large objects and a gap, eight leave room to move.
GRID_CELLS = {"large": 3, "small": 2}
MIN_GRID = 8
SUPERSAMPLE = 4

_MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_LONG_RELATION = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
_SYNONYM_RELATION = {"left of": "left of", "right of": "right of", "above": "over", "below": "under"}
_SIZE_SYNONYM = {"large": "big", "small": "little"}


@dataclass(frozen=True)
class ObjectSpec:
    """What one object is: its size word, colour name and shape name."""

    size: str
    colour: str
    shape: str

    def words(self, size_word: str | None = None) -> str:
        return f"{size_word or self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class SceneSpec:
    """What a scene shows: objects in canonical order and, for two, how the first relates to the second."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None


@dataclass(frozen=True)
class Placement:
    """Where and how one object is drawn; the box is in fractions of the image side."""

    left: float
    top: float
    side: float
    rgb: RGB


@dataclass(frozen=True)
class Scene:
    """A spec plus its rendering: one placement per object, in the spec's order."""

    scene_id: str
    split: str
    spec: SceneSpec
    placements: tuple[Placement, ...]


# --- descriptions and captions -----------------------------------------------------------------------------


def precedence(obj: ObjectSpec) -> tuple[int, int, int]:
    """The canonical naming order: large first, then shape order, then colour order."""
    return SIZES.index(obj.size), SHAPES.index(obj.shape), list(COLOURS).index(obj.colour)


def make_spec(first: ObjectSpec, second: ObjectSpec | None = None, relation: str | None = None) -> SceneSpec:
    """Build a spec with the objects in canonical order, mirroring the relation when they swap."""
    if second is None:
        return SceneSpec((first,))
    if first == second:
        raise ValueError("two objects in a scene must differ in size, colour or shape")
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r} (expected one of {', '.join(RELATIONS)})")
    if precedence(second) < precedence(first):
        return SceneSpec((second, first), _MIRROR[relation])
    return SceneSpec((first, second), relation)


def reading_order(spec: SceneSpec) -> SceneSpec:
    """The same scene with the left (or upper) object named first: "right of" / "below" become their mirrors."""
    if spec.relation in ("right of", "below"):
        return SceneSpec((spec.objects[1], spec.objects[0]), _MIRROR[spec.relation])
    return spec


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _noun_phrase(obj: ObjectSpec, style_word: str | None = None, size_word: str | None = None) -> str:
    words = obj.words(size_word)
    if style_word:
        words = f"{style_word} {words}"
    return f"{_article(words)} {words}"


class _Template(NamedTuple):
    """How one neutral caption is phrased."""

    first: ObjectSpec
    second: ObjectSpec | None = None
    relation: str = ""
    prefix: str = ""
    size_synonyms: bool = False


def _neutral_templates(spec: SceneSpec) -> list[_Template]:
    """One template per neutral caption, the canonical one first."""
    if len(spec.objects) == 1:
        (only,) = spec.objects
        return [_Template(only), _Template(only, size_synonyms=True), _Template(only, prefix="there is ")]
    first, second = spec.objects
    relation = spec.relation or ""
    mirrored = _MIRROR[relation]
    return [
        _Template(first, second, relation),
        _Template(second, first, mirrored),
        _Template(first, second, _LONG_RELATION[relation]),
        _Template(second, first, _LONG_RELATION[mirrored]),
        _Template(first, second, _SYNONYM_RELATION[relation], size_synonyms=True),
        _Template(first, second, relation, prefix="there is "),
    ]


def _caption(template: _Template, style_word: str | None) -> str:
    def size_word(obj: ObjectSpec) -> str:
        return _SIZE_SYNONYM[obj.size] if template.size_synonyms else obj.size

    text = template.prefix + _noun_phrase(template.first, style_word, size_word(template.first))
    if template.second is not None:
        text += f" {template.relation} {_noun_phrase(template.second, None, size_word(template.second))}"
    return text


def scene_captions(scene: Scene | SceneSpec) -> dict[str, list[str]]:
    """Neutral, positive and negative captions; the canonical caption is ``["neutral"][0]``.

    ``positive[i]`` and ``negative[i]`` are styled versions of ``neutral[i]``.
    """
    spec = scene.spec if isinstance(scene, Scene) else scene
    templates = _neutral_templates(spec)
    captions: dict[str, list[str]] = {"neutral": [], "positive": [], "negative": []}
    for index, template in enumerate(templates):
        captions["neutral"].append(_caption(template, None))
        captions["positive"].append(_caption(template, POSITIVE_WORDS[index % len(POSITIVE_WORDS)]))
        captions["negative"].append(_caption(template, NEGATIVE_WORDS[index % len(NEGATIVE_WORDS)]))
    return captions


def canonical_caption(scene: Scene | SceneSpec) -> str:
    return scene_captions(scene)["neutral"][0]


# --- which split a description belongs to ------------------------------------------------------------------


def description_split(spec: SceneSpec, partition_seed: int = 0, held_out_fraction: float = 0.1) -> str | None:
    """The only split a two-object description may appear in; ``None`` (any split) for one object, or for all
    descriptions when ``held_out_fraction`` is 0.

    A stable hash of the canonical caption puts ``held_out_fraction`` of two-object descriptions in val, as
    many in test, and the rest in train.
    """
    if len(spec.objects) == 1 or held_out_fraction == 0:
        return None
    digest = hashlib.sha256(f"{partition_seed}:{canonical_caption(spec)}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < held_out_fraction:
        return "val"
    if position < 2 * held_out_fraction:
        return "test"
    return "train"


# --- sampling ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneOptions:
    """What scenes are drawn from; the defaults are the demo's task."""

    two_object_fraction: float = 0.5
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = DEFAULT_COLOURS
    partition_seed: int = 0
    held_out_fraction: float = 0.1
    # "precedence": the canonical caption names objects in precedence order (large first, ...); "reading": in
    # reading order (the left or upper object first, so canonical captions say "left of" / "above"; the mirrored
    # "right of" / "below" phrasings stay among the references).
    order: str = "precedence"
    # "free": two objects anywhere the relation holds; "opposite": on opposite sides of the image centre, each in
    # the wedge of its side (left/right/top/bottom), which makes the relation plain even on a coarse patch grid.
    layout: str = "free"
    # 0: positions and sizes are continuous. N >= 8: every box is whole cells of an N x N grid (small 2 cells,
    # large 3); with N = image size / ViT patch size each object covers whole patches, which makes shapes far
    # easier to learn from scratch.
    grid: int = 0

    def __post_init__(self) -> None:
        unknown = [name for name in self.shapes if name not in SHAPES]
        unknown += [name for name in self.colours if name not in COLOURS]
        if unknown:
            raise ValueError(f"unknown shape or colour: {', '.join(unknown)}")
        if not 0 <= self.two_object_fraction <= 1:
            raise ValueError("two_object_fraction must be within [0, 1]")
        if not 0 <= self.held_out_fraction < 0.5:
            raise ValueError("held_out_fraction must be within [0, 0.5)")
        if self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r} (expected one of {', '.join(ORDERS)})")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r} (expected one of {', '.join(LAYOUTS)})")
        if self.grid != 0 and self.grid < MIN_GRID:
            raise ValueError(f"grid must be 0 (off) or at least {MIN_GRID} cells a side, got {self.grid}")


def _random_object(rng: random.Random, options: SceneOptions) -> ObjectSpec:
    return ObjectSpec(rng.choice(SIZES), rng.choice(options.colours), rng.choice(options.shapes))


def _random_spec(rng: random.Random, split: str, options: SceneOptions) -> SceneSpec:
    if rng.random() >= options.two_object_fraction:
        return make_spec(_random_object(rng, options))
    while True:
        first, second = _random_object(rng, options), _random_object(rng, options)
        if first == second:
            continue
        spec = make_spec(first, second, rng.choice(RELATIONS))
        if options.order == "reading":
            spec = reading_order(spec)
        if description_split(spec, options.partition_seed, options.held_out_fraction) in (split, None):
            return spec


def _object_side(rng: random.Random, obj: ObjectSpec) -> float:
    return SIZE_FRACTION[obj.size] * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)


def _shade(rng: random.Random, colour: str) -> tuple[int, int, int]:
    red, green, blue = (
        min(255, max(0, channel + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for channel in COLOURS[colour]
    )
    return red, green, blue


def _split_free_space(rng: random.Random, first: float, second: float) -> tuple[float, float]:
    """Start of two intervals of length ``first`` then ``second``, in order and apart, inside the margins."""
    free = 1 - 2 * MARGIN - MIN_GAP - first - second
    cut_a, cut_b = sorted((rng.uniform(0, free), rng.uniform(0, free)))
    start_first = MARGIN + cut_a
    start_second = start_first + first + MIN_GAP + (cut_b - cut_a)
    return start_first, start_second


def _place_apart(rng: random.Random, sides: tuple[float, float], relation: str) -> list[tuple[float, float]]:
    """(left, top) of both boxes so that the first object is ``relation`` the second, unambiguously.

    Along the relation's axis the boxes are apart; across it the centres differ by at most half their distance
    along it, so the relation is also the dominant direction between the objects.
    """
    forward = relation in ("left of", "above")
    order = (0, 1) if forward else (1, 0)
    starts = _split_free_space(rng, sides[order[0]], sides[order[1]])
    along = [0.0, 0.0]
    along[order[0]], along[order[1]] = starts
    distance = abs((along[0] + sides[0] / 2) - (along[1] + sides[1] / 2))
    while True:
        across = [rng.uniform(MARGIN, 1 - MARGIN - side) for side in sides]
        if abs((across[0] + sides[0] / 2) - (across[1] + sides[1] / 2)) <= distance / 2:
            break
    if relation in ("left of", "right of"):
        return [(along[i], across[i]) for i in range(2)]
    return [(across[i], along[i]) for i in range(2)]


# The side of the image centre each object of a relation lies on, for the "opposite" layout.
_SIDES = {
    "left of": ("left", "right"),
    "right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}
# How far inside its wedge an object's centre must be (as a share of the image side).
WEDGE_DEPTH = 0.05


def _in_wedge(x: float, y: float, side: str) -> bool:
    """Whether centre (x, y) lies in the wedge of ``side``: further that way from the image centre than across."""
    dx, dy = x - 0.5, y - 0.5
    beyond = {"left": -dx - abs(dy), "right": dx - abs(dy), "top": -dy - abs(dx), "bottom": dy - abs(dx)}[side]
    return beyond >= WEDGE_DEPTH


def _place_opposite(rng: random.Random, sides: tuple[float, float], relation: str) -> list[tuple[float, float]]:
    """(left, top) of both boxes, their centres in opposite wedges; redrawn until they are apart along the axis
    and the relation is the dominant direction between them."""
    horizontal = relation in ("left of", "right of")
    while True:
        centres = []
        for side, wedge in zip(sides, _SIDES[relation], strict=True):
            low, high = MARGIN + side / 2, 1 - MARGIN - side / 2
            while True:
                x, y = rng.uniform(low, high), rng.uniform(low, high)
                if _in_wedge(x, y, wedge):
                    centres.append((x, y))
                    break
        (x0, y0), (x1, y1) = centres
        along, across = (abs(x1 - x0), abs(y1 - y0)) if horizontal else (abs(y1 - y0), abs(x1 - x0))
        if along >= (sides[0] + sides[1]) / 2 + MIN_GAP and across <= along / 2:
            return [(x - side / 2, y - side / 2) for (x, y), side in zip(centres, sides, strict=True)]


def arrangement_holds(boxes: list[tuple[float, float, float]], relation: str, layout: str = "free") -> bool:
    """Whether two boxes ``(left, top, side)`` show ``relation`` plainly: apart along its axis by ``MIN_GAP``,
    the relation the dominant direction between the centres and, for the "opposite" layout, in their wedges."""
    horizontal = relation in ("left of", "right of")
    axis = 0 if horizontal else 1
    starts = [box[axis] for box in boxes]
    first, second = (0, 1) if relation in ("left of", "above") else (1, 0)
    if starts[first] + boxes[first][2] + MIN_GAP > starts[second]:
        return False
    centres = [(left + side / 2, top + side / 2) for left, top, side in boxes]
    along = abs(centres[1][axis] - centres[0][axis])
    across = abs(centres[1][1 - axis] - centres[0][1 - axis])
    if across > along / 2:
        return False
    return layout != "opposite" or all(
        _in_wedge(x, y, wedge) for (x, y), wedge in zip(centres, _SIDES[relation], strict=True)
    )


def _grid_box(rng: random.Random, side_cells: int, cells: int, wedge: str | None) -> tuple[float, float, float]:
    """A box of whole cells at a whole-cell position; with ``wedge``, redrawn until its centre lies in it."""
    positions, side = cells - side_cells + 1, side_cells / cells
    while True:
        left, top = rng.randrange(positions) / cells, rng.randrange(positions) / cells
        if wedge is None or _in_wedge(left + side / 2, top + side / 2, wedge):
            return left, top, side


def _place_on_grid(rng: random.Random, spec: SceneSpec, layout: str, cells: int) -> tuple[Placement, ...]:
    """Boxes of whole cells at whole-cell positions, redrawn until the relation holds."""
    shades = [_shade(rng, obj.colour) for obj in spec.objects]
    if spec.relation is None:
        wedges: tuple[str | None, ...] = (None,)
    else:
        wedges = _SIDES[spec.relation] if layout == "opposite" else (None, None)
    while True:
        boxes = [_grid_box(rng, GRID_CELLS[obj.size], cells, w) for obj, w in zip(spec.objects, wedges, strict=True)]
        if spec.relation is None or arrangement_holds(boxes, spec.relation, layout):
            return tuple(Placement(*box, rgb) for box, rgb in zip(boxes, shades, strict=True))


def _place(rng: random.Random, spec: SceneSpec, layout: str = "free") -> tuple[Placement, ...]:
    sides = [_object_side(rng, obj) for obj in spec.objects]
    shades = [_shade(rng, obj.colour) for obj in spec.objects]
    if len(spec.objects) == 1:
        corners = [(rng.uniform(MARGIN, 1 - MARGIN - sides[0]), rng.uniform(MARGIN, 1 - MARGIN - sides[0]))]
    elif layout == "opposite":
        corners = _place_opposite(rng, (sides[0], sides[1]), spec.relation or "")
    else:
        corners = _place_apart(rng, (sides[0], sides[1]), spec.relation or "")
    return tuple(Placement(left, top, side, rgb) for (left, top), side, rgb in zip(corners, sides, shades, strict=True))


def generate_scenes(n: int, seed: int, split: str = "train", options: SceneOptions | None = None) -> list[Scene]:
    """``n`` scenes of ``split``; scene ``i`` depends only on (seed, split, i, options): fewer is a prefix."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    options = options or SceneOptions()
    scenes = []
    for index in range(n):
        rng = random.Random(f"captionkit-synthetic:{seed}:{split}:{index}")
        spec = _random_spec(rng, split, options)
        if options.grid:
            placements = _place_on_grid(rng, spec, options.layout, options.grid)
        else:
            placements = _place(rng, spec, options.layout)
        scenes.append(Scene(f"{split}-{index:06d}", split, spec, placements))
    return scenes


# --- rendering ---------------------------------------------------------------------------------------------


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], rgb: RGB) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(left, bottom), (right, bottom), ((left + right) / 2, top)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, image_size: int = 32) -> Image.Image:
    """Draw ``scene`` as an RGB image ``image_size`` pixels a side.

    It is drawn larger and box-downsampled, so that edges are smooth and small shapes keep their outline.
    """
    canvas_size = image_size * SUPERSAMPLE
    image = Image.new("RGB", (canvas_size, canvas_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj, place in zip(scene.spec.objects, scene.placements, strict=True):
        left, top, side = (value * canvas_size for value in (place.left, place.top, place.side))
        # PIL's boxes include their right and bottom pixel: stop one short so a box covers exactly its side.
        _draw_object(draw, obj.shape, (left, top, left + side - 1, top + side - 1), place.rgb)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


# --- the data set on disk ----------------------------------------------------------------------------------


def scene_records(scene: Scene, image_path: Path) -> list[CaptionRecord]:
    """One record per caption: neutral first (the canonical caption first of all), then positive, negative."""
    return [
        CaptionRecord(image_path, caption, style, scene.scene_id, scene.split)
        for style, captions in scene_captions(scene).items()
        for caption in captions
    ]


def write_synthetic_dataset(
    directory: str | Path,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int = 0,
    image_size: int = 32,
    options: SceneOptions | None = None,
    workers: int = 0,
) -> Path:
    """Write ``images/<split>/<scene_id>.png`` and ``captions.jsonl`` in ``directory``; return the JSONL path.

    The first neutral caption of each image is its canonical one. Scenes are chosen in this process (one seeded
    sequence); ``workers`` > 0 processes draw and save them, byte for byte the files a serial run writes.
    """
    directory = Path(directory)
    records: list[CaptionRecord] = []
    drawings: list[tuple[Scene, int, Path]] = []
    for split, count in zip(SPLITS, (num_train, num_val, num_test), strict=True):
        image_dir = directory / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        for scene in generate_scenes(count, seed, split, options):
            image_path = image_dir / f"{scene.scene_id}.png"
            drawings.append((scene, image_size, image_path))
            records.extend(scene_records(scene, image_path))
    if workers > 0 and len(drawings) > 1:
        # spawn, not fork: the caller may hold threads (torch's), and a forked child could deadlock on their locks.
        context = multiprocessing.get_context("spawn")
        with _born_ignoring_ctrl_c():  # only while the workers start: Ctrl-C while drawing stops the drawing
            pool = context.Pool(min(workers, len(drawings)), initializer=_ignore_ctrl_c)
        with pool:
            # A small batch at a time: the pool's feeder thread writes all of a map's tasks into a pipe only the
            # workers read. Given every drawing at once, Ctrl-C could find it blocked mid-write, and terminate(),
            # which joins it after stopping the workers, waited for ever (seen about one run in six). A batch's
            # tasks fit in the pipe, so the feeder is never left blocked.
            batch = DRAWING_BATCH * workers
            for start in range(0, len(drawings), batch):
                pool.map(_draw, drawings[start : start + batch], chunksize=DRAWING_BATCH // 8)
    else:
        for drawing in drawings:
            _draw(drawing)
    return write_jsonl(records, directory / "captions.jsonl")


@contextmanager
def _born_ignoring_ctrl_c() -> Iterator[None]:
    """Ctrl-C ignored in this process while the pool starts its workers, which inherit that: a worker still
    importing when Ctrl-C came (before its initializer ran) printed a KeyboardInterrupt traceback. Only the main
    thread may set handlers; a Ctrl-C in that moment (the workers' start, not their imports) is not seen."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _ignore_ctrl_c() -> None:
    # Ctrl-C reaches the whole process group: this process answers it (the pool is terminated on the way out),
    # so a drawing process must not print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _draw(drawing: tuple[Scene, int, Path]) -> None:
    scene, image_size, path = drawing
    render(scene, image_size).save(path, format="PNG")
