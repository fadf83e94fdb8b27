"""Rendering: a scene's label map and the RGB image coloured from it.

Shapes are drawn with PIL ImageDraw into a label map (one value per shape, no antialiasing), and the
image is that map looked up in a fixed palette, so every pixel has exactly one owner: the answers
that count pixels (which half is more filled, the dominant colour) are taken from the same map the
image is coloured from, and the same scene always gives identical pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from llava.data.shapes.scene import BACKGROUND_COLORS, SHAPE_COLORS, SHAPE_KINDS, Scene, Shape


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, value: int) -> None:
    x0, y0, x1, y1 = shape.bbox
    if shape.kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=value)
    elif shape.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=value)
    elif shape.kind == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=value)
    elif shape.kind == "x":
        # Two diagonal bands drawn as polygons, so no pixel leaves the box (wide lines would).
        w = max(2, round(0.22 * (x1 - x0 + 1)))
        draw.polygon([(x0, y0), (x0 + w, y0), (x1, y1 - w), (x1, y1), (x1 - w, y1), (x0, y0 + w)], fill=value)
        draw.polygon([(x1, y0), (x1, y0 + w), (x0 + w, y1), (x0, y1), (x0, y1 - w), (x1 - w, y0)], fill=value)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}; expected one of {SHAPE_KINDS}")


def label_map(scene: Scene) -> np.ndarray:
    """(S, S) uint8 map: 0 for background, i + 1 for the pixels of scene.shapes[i]."""
    labels = Image.new("L", (scene.image_size, scene.image_size), 0)
    draw = ImageDraw.Draw(labels)
    for i, shape in enumerate(scene.shapes):
        _draw_shape(draw, shape, i + 1)
    return np.asarray(labels)


def render(scene: Scene, labels: np.ndarray | None = None) -> Image.Image:
    """The RGB image: the label map coloured with the fixed palette."""
    labels = label_map(scene) if labels is None else labels
    palette = [BACKGROUND_COLORS[scene.background]] + [SHAPE_COLORS[shape.color] for shape in scene.shapes]
    return Image.fromarray(np.asarray(palette, dtype=np.uint8)[labels], mode="RGB")
