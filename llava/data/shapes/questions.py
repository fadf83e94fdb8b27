"""The question set: every question type, its difficulty, its wording and every answer it can have.

Difficulty says how much visual detail a question needs, so accuracy per difficulty shows what each
M3 token budget keeps:

- coarse: background colour, which half holds more shape pixels, the dominant shape colour;
- medium: the colour of the one shape in a quadrant;
- fine:   number of shapes, number of small shapes of a colour, whether there is a small X.

The set is closed, so `vocabulary()` lists every word a tiny word-level tokenizer needs.
"""

from __future__ import annotations

import re

from llava.data.shapes.scene import BACKGROUND_COLORS, MAX_SHAPES, MAX_SMALL_COLOR_COUNT, SHAPE_COLORS

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")

QUESTION_TYPES: dict[str, str] = {
    "background_color": "coarse",
    "heavier_half": "coarse",
    "dominant_color": "coarse",
    "quadrant_color": "medium",
    "count_shapes": "fine",
    "count_small_color": "fine",
    "small_x": "fine",
}
DIFFICULTIES = ("coarse", "medium", "fine")
QUESTION_TEMPLATES: dict[str, str] = {
    "background_color": "What color is the background?",
    "heavier_half": "Is the left or right half more filled?",
    "dominant_color": "What is the dominant shape color?",
    "quadrant_color": "What color is the shape in the {quadrant} quadrant?",
    "count_shapes": "How many shapes are there?",
    "count_small_color": "How many small {color} shapes are there?",
    "small_x": "Is there a small X?",
}
# Every answer each question type can produce; digits are single tokens for a tiny tokenizer.
ANSWERS: dict[str, tuple[str, ...]] = {
    "background_color": tuple(BACKGROUND_COLORS),
    "heavier_half": ("left", "right"),
    "dominant_color": tuple(SHAPE_COLORS),
    "quadrant_color": tuple(SHAPE_COLORS),
    "count_shapes": tuple(str(n) for n in range(1, MAX_SHAPES + 1)),
    "count_small_color": tuple(str(n) for n in range(MAX_SMALL_COLOR_COUNT + 1)),
    "small_x": ("yes", "no"),
}

# Words are runs of letters/digits; every other non-space character is a token of its own.
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Word tokens of a question or answer (case kept); "<image>" is not a word, strip it first."""
    return WORD_PATTERN.findall(text)


def all_questions() -> list[str]:
    """Every question text the generator can emit."""
    questions = []
    for qtype, template in QUESTION_TEMPLATES.items():
        if qtype == "quadrant_color":
            questions += [template.format(quadrant=quadrant) for quadrant in QUADRANTS]
        elif qtype == "count_small_color":
            questions += [template.format(color=color) for color in SHAPE_COLORS]
        else:
            questions.append(template)
    return questions


def vocabulary() -> list[str]:
    """Sorted tokens (by `split_words`) of every question and answer; for building a tiny tokenizer."""
    texts = all_questions() + [answer for answers in ANSWERS.values() for answer in answers]
    return sorted({word for text in texts for word in split_words(text)})
