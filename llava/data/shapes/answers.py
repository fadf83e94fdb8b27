"""Answers, each derived from a scene (and its label map where pixel areas matter).

A question is asked only when its answer is unambiguous: "more filled" only when one half has at
least `HALF_RATIO` times the other's shape pixels; the dominant colour only when it has at least
`DOMINANT_RATIO` times the runner-up's pixels; a quadrant only when exactly one shape box lies fully
inside it and no other shape box reaches into it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from llava.data.shapes.balance import AnswerBalancer
from llava.data.shapes.questions import QUADRANTS, QUESTION_TEMPLATES
from llava.data.shapes.scene import SHAPE_COLORS, Box, Scene, ScenePlan, boxes_apart, pick

HALF_RATIO = 2.0
DOMINANT_RATIO = 1.5


def heavier_half_answer(labels: np.ndarray) -> str | None:
    """The half ("left"/"right") with >= HALF_RATIO times the other's shape pixels, else None."""
    mid = labels.shape[1] // 2
    left, right = int(np.count_nonzero(labels[:, :mid])), int(np.count_nonzero(labels[:, mid:]))
    if left >= HALF_RATIO * right and left > 0:
        return "left"
    if right >= HALF_RATIO * left and right > 0:
        return "right"
    return None


def color_areas(scene: Scene, labels: np.ndarray) -> dict[str, int]:
    pixels = np.bincount(labels.ravel(), minlength=len(scene.shapes) + 1)
    areas: Counter[str] = Counter()
    for i, shape in enumerate(scene.shapes):
        areas[shape.color] += int(pixels[i + 1])
    return dict(areas)


def dominant_color_answer(scene: Scene, labels: np.ndarray) -> str | None:
    """The colour with >= DOMINANT_RATIO times the pixels of any other colour, else None."""
    ranked = sorted(color_areas(scene, labels).items(), key=lambda item: -item[1])
    if len(ranked) == 1 or ranked[0][1] >= DOMINANT_RATIO * ranked[1][1]:
        return ranked[0][0]
    return None


def quadrant_box(quadrant: str, image_size: int) -> Box:
    mid = image_size // 2
    top = quadrant.startswith("top")
    left = quadrant.endswith("left")
    return (
        0 if left else mid,
        0 if top else mid,
        mid - 1 if left else image_size - 1,
        mid - 1 if top else image_size - 1,
    )


def _contains(outer: Box, inner: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def quadrant_answers(scene: Scene) -> dict[str, str]:
    """Colour per quadrant that holds exactly one whole shape box and meets no other shape box."""
    answers = {}
    for quadrant in QUADRANTS:
        box = quadrant_box(quadrant, scene.image_size)
        inside = [shape for shape in scene.shapes if _contains(box, shape.bbox)]
        touching = [shape for shape in scene.shapes if not boxes_apart(box, shape.bbox, 0)]
        if len(inside) == 1 and len(touching) == 1:
            answers[quadrant] = inside[0].color
    return answers


def count_small(scene: Scene, color: str) -> int:
    return sum(shape.size == "small" and shape.color == color for shape in scene.shapes)


def has_small_x(scene: Scene) -> bool:
    return any(shape.size == "small" and shape.kind == "x" for shape in scene.shapes)


def scene_questions(
    rng: np.random.Generator, scene: Scene, labels: np.ndarray, plan: ScenePlan, balancer: AnswerBalancer
) -> list[tuple[str, str, str]]:
    """(question type, question, answer) for every question this scene answers unambiguously."""
    found = {
        "background_color": ({}, scene.background),
        "heavier_half": ({}, heavier_half_answer(labels)),
        "dominant_color": ({}, dominant_color_answer(scene, labels)),
        "quadrant_color": _quadrant_question(rng, scene, balancer),
        "count_shapes": ({}, str(len(scene.shapes))),
        "count_small_color": ({"color": plan.count_color}, str(count_small(scene, plan.count_color))),
        "small_x": ({}, "yes" if has_small_x(scene) else "no"),
    }
    return [
        (qtype, QUESTION_TEMPLATES[qtype].format(**fields), answer)
        for qtype, (fields, answer) in found.items()
        if answer is not None
    ]


def _quadrant_question(
    rng: np.random.Generator, scene: Scene, balancer: AnswerBalancer
) -> tuple[dict[str, str], str | None]:
    answers = quadrant_answers(scene)
    if not answers:
        return {}, None
    color = balancer.choose(rng, "quadrant_color", sorted(set(answers.values()), key=list(SHAPE_COLORS).index))
    quadrant = pick(rng, [quadrant for quadrant, answer in answers.items() if answer == color])
    return {"quadrant": quadrant}, color
