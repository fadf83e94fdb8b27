"""Scenes: which shapes an M3-Shapes image holds, their colours and where their pixel boxes lie.

A scene is sampled to follow a `ScenePlan` (the answers it is built to give, chosen in `balance`):
the shapes the plan fixes are specified first, filler shapes are drawn at random, and the boxes are
placed by rejection sampling with a bounded number of tries so that no two boxes touch. Boxes that
never touch are what make the quadrant and area questions unambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_IMAGE_SIZE = 96
MIN_IMAGE_SIZE = 48

BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "navy": (0, 0, 110),
}
SHAPE_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 120, 255),
    "yellow": (245, 215, 20),
    "purple": (165, 60, 225),
}
SHAPE_KINDS = ("circle", "square", "triangle", "x")
# Side of a shape's bounding box as a fraction of the image side.
SIZE_FRACTIONS = {"large": 0.25, "small": 0.10}

MAX_SHAPES = 6
MAX_SMALL_COLOR_COUNT = 3
# Filler shapes (those not fixed by the plan) are large with this probability.
P_LARGE = 0.4
# Shapes after the first go to the planned heavier half with this probability.
P_HEAVY_HALF = 0.75
PLACEMENT_TRIES = 50
LAYOUT_TRIES = 100

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Shape:
    """One shape; `bbox` is (x0, y0, x1, y1) in pixels, inclusive, and holds every pixel drawn."""

    kind: str
    color: str
    size: str
    bbox: Box


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]
    image_size: int


@dataclass(frozen=True)
class ScenePlan:
    """Answers a scene is built to produce (see `balance` for how they are chosen)."""

    background: str
    num_shapes: int
    heavy_half: str
    small_x: bool
    count_color: str
    small_count: int
    dominant_color: str


def shape_side(size: str, image_size: int) -> int:
    return round(SIZE_FRACTIONS[size] * image_size)


def check_image_size(image_size: int) -> None:
    """Sizes the generator supports: even, so the halves and quadrants have equal sides, and >= MIN_IMAGE_SIZE."""
    if image_size < MIN_IMAGE_SIZE or image_size % 2:
        raise ValueError(f"image_size must be an even number >= {MIN_IMAGE_SIZE}, got {image_size}")


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of `options`, uniformly, from a single integer draw of `rng`."""
    return options[int(rng.integers(len(options)))]


def boxes_apart(a: Box, b: Box, gap: int) -> bool:
    """Whether more than `gap` pixels separate two inclusive boxes along x or along y."""
    return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]


def _shape_specs(rng: np.random.Generator, plan: ScenePlan) -> list[tuple[str, str, str]]:
    """(kind, colour, size) per shape, large ones first, honouring the plan's counts."""
    plain_kinds = tuple(kind for kind in SHAPE_KINDS if kind != "x")
    other_colors = tuple(color for color in SHAPE_COLORS if color != plan.count_color)
    specs = [(pick(rng, plain_kinds), plan.count_color, "small") for _ in range(plan.small_count)]
    if plan.small_x:
        if specs and (len(specs) == plan.num_shapes or rng.random() < 0.5):
            specs[0] = ("x", plan.count_color, "small")
        else:
            specs.append(("x", pick(rng, other_colors), "small"))
    for i in range(plan.num_shapes - len(specs)):
        size = "large" if rng.random() < P_LARGE else "small"
        kind = pick(rng, SHAPE_KINDS if size == "large" or plan.small_x else plain_kinds)
        colors = tuple(SHAPE_COLORS) if size == "large" else other_colors
        color = plan.dominant_color if i == 0 and plan.dominant_color in colors else pick(rng, colors)
        specs.append((kind, color, size))
    # Large shapes first: they are the hardest to place, and the first one anchors the heavier half.
    specs.sort(key=lambda spec: spec[2] != "large")
    return specs


def _try_box(
    rng: np.random.Generator, side: int, x_range: tuple[int, int], image_size: int, placed: list[Shape]
) -> Box | None:
    """A random box of `side` px with x0 in x_range (inclusive) that keeps its gap to `placed`."""
    margin = gap = max(2, image_size // 48)
    if x_range[1] < x_range[0]:
        return None
    for _ in range(PLACEMENT_TRIES):
        x0 = int(rng.integers(x_range[0], x_range[1] + 1))
        y0 = int(rng.integers(margin, image_size - margin - side + 1))
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        if all(boxes_apart(box, shape.bbox, gap) for shape in placed):
            return box
    return None


def _x_ranges(side: int, image_size: int) -> dict[str, tuple[int, int]]:
    """Allowed x0 per region so the box lies fully in the left half, the right half or anywhere."""
    margin = max(2, image_size // 48)
    mid = image_size // 2
    return {
        "left": (margin, mid - side),
        "right": (mid, image_size - margin - side),
        "anywhere": (margin, image_size - margin - side),
    }


def _layout(
    rng: np.random.Generator, specs: list[tuple[str, str, str]], heavy_half: str, image_size: int
) -> list[Shape] | None:
    light_half = "right" if heavy_half == "left" else "left"
    placed: list[Shape] = []
    for i, (kind, color, size) in enumerate(specs):
        side = shape_side(size, image_size)
        ranges = _x_ranges(side, image_size)
        half = heavy_half if i == 0 or rng.random() < P_HEAVY_HALF else light_half
        box = _try_box(rng, side, ranges[half], image_size, placed)
        box = box or _try_box(rng, side, ranges["anywhere"], image_size, placed)
        if box is None:
            return None
        placed.append(Shape(kind=kind, color=color, size=size, bbox=box))
    return placed


def sample_scene(rng: np.random.Generator, plan: ScenePlan, image_size: int) -> Scene:
    """A scene following `plan`; raises RuntimeError if the shapes cannot be placed apart."""
    specs = _shape_specs(rng, plan)
    for _ in range(LAYOUT_TRIES):
        shapes = _layout(rng, specs, plan.heavy_half, image_size)
        if shapes is not None:
            return Scene(background=plan.background, shapes=tuple(shapes), image_size=image_size)
    raise RuntimeError(f"could not place {len(specs)} shapes apart in {LAYOUT_TRIES} layouts of {image_size} px")
