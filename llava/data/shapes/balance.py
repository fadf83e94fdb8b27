"""Answer balancing: each new scene is built to give the answers used least so far.

Every question type keeps a histogram of the answers emitted so far, and `make_plan` chooses, before
any shape is placed, the least-used background colour, number of shapes, heavier half, whether there
is a small X, number of small shapes of the asked colour (0-3, among values that fit the shape count)
and colour of one free shape (which often makes it the dominant colour); ties are broken by the
seeded generator. Quadrant questions pick, among the quadrants that are unambiguous, one whose colour
is least used so far (`answers.scene_questions`). Shape colours are otherwise uniform, so the colour
answers are balanced by symmetry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from llava.data.shapes.questions import ANSWERS, QUESTION_TYPES
from llava.data.shapes.scene import MAX_SMALL_COLOR_COUNT, SHAPE_COLORS, ScenePlan, pick


class AnswerBalancer:
    """Per question type histogram of emitted answers; `choose` returns a least-used option."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {qtype: Counter() for qtype in QUESTION_TYPES}

    def choose(self, rng: np.random.Generator, qtype: str, options: Sequence[str]) -> str:
        least = min(self.counts[qtype][option] for option in options)
        tied = [option for option in options if self.counts[qtype][option] == least]
        return tied[int(rng.integers(len(tied)))]

    def record(self, qtype: str, answer: str) -> None:
        self.counts[qtype][answer] += 1


def make_plan(rng: np.random.Generator, balancer: AnswerBalancer) -> ScenePlan:
    """The answers the next scene is built to give; the draw order is part of the data set's seed contract."""
    num_shapes = int(balancer.choose(rng, "count_shapes", ANSWERS["count_shapes"]))
    possible_counts = ANSWERS["count_small_color"][: min(num_shapes, MAX_SMALL_COLOR_COUNT) + 1]
    return ScenePlan(
        background=balancer.choose(rng, "background_color", ANSWERS["background_color"]),
        num_shapes=num_shapes,
        heavy_half=balancer.choose(rng, "heavier_half", ANSWERS["heavier_half"]),
        small_x=balancer.choose(rng, "small_x", ANSWERS["small_x"]) == "yes",
        count_color=pick(rng, tuple(SHAPE_COLORS)),
        small_count=int(balancer.choose(rng, "count_small_color", possible_counts)),
        dominant_color=balancer.choose(rng, "dominant_color", ANSWERS["dominant_color"]),
    )
