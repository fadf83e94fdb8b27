"""M3-Shapes: a deterministic synthetic visual-QA set in the LLaVA conversation format.

Each image is a square scene (default 96 px) with a solid background and 1-6 non-overlapping shapes
(circle, square, triangle, X) in two sizes. Every image gets 4-7 single-word questions that need
different amounts of visual detail (coarse, medium, fine), so accuracy per difficulty shows what
each M3 token budget keeps. `python -m llava.data.shapes --out DIR --split train` writes a split.

One idea per module, in the order a split is made:

- `scene`:     palettes, shape kinds and sizes; a scene sampled to follow a plan, boxes kept apart;
- `balance`:   the plan: the least-used answers so far, chosen before the shapes are placed;
- `drawing`:   the label map and the RGB image coloured from it;
- `questions`: the closed question set (types, difficulties, wording, answers, vocabulary);
- `answers`:   each answer derived from the scene and its pixels, asked only when unambiguous;
- `generate`:  the data-set writer (images, records, scenes, meta) and its command line;
- `scoring`:   answer normalisation and accuracy by difficulty and question type.

Every public name of those modules that callers use is importable from here
(`from llava.data import shapes; shapes.generate_split(...)`).
"""

from llava.data.shapes.answers import (
    DOMINANT_RATIO,
    HALF_RATIO,
    color_areas,
    count_small,
    dominant_color_answer,
    has_small_x,
    heavier_half_answer,
    quadrant_answers,
    quadrant_box,
)
from llava.data.shapes.drawing import label_map, render
from llava.data.shapes.generate import (
    DATA_VERSION,
    DEFAULT_NUM_IMAGES,
    DEFAULT_SEEDS,
    SPLITS,
    generate_split,
    main,
    parse_args,
)
from llava.data.shapes.questions import (
    ANSWERS,
    DIFFICULTIES,
    QUADRANTS,
    QUESTION_TEMPLATES,
    QUESTION_TYPES,
    WORD_PATTERN,
    all_questions,
    split_words,
    vocabulary,
)
from llava.data.shapes.scene import (
    BACKGROUND_COLORS,
    DEFAULT_IMAGE_SIZE,
    LAYOUT_TRIES,
    MAX_SHAPES,
    MAX_SMALL_COLOR_COUNT,
    MIN_IMAGE_SIZE,
    P_HEAVY_HALF,
    P_LARGE,
    PLACEMENT_TRIES,
    SHAPE_COLORS,
    SHAPE_KINDS,
    SIZE_FRACTIONS,
    Scene,
    ScenePlan,
    Shape,
    sample_scene,
    shape_side,
)
from llava.data.shapes.scoring import answer_matches, normalize_answer, score

__all__ = [
    "ANSWERS",
    "BACKGROUND_COLORS",
    "DATA_VERSION",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_SEEDS",
    "DIFFICULTIES",
    "DOMINANT_RATIO",
    "HALF_RATIO",
    "LAYOUT_TRIES",
    "MAX_SHAPES",
    "MAX_SMALL_COLOR_COUNT",
    "MIN_IMAGE_SIZE",
    "PLACEMENT_TRIES",
    "P_HEAVY_HALF",
    "P_LARGE",
    "QUADRANTS",
    "QUESTION_TEMPLATES",
    "QUESTION_TYPES",
    "SHAPE_COLORS",
    "SHAPE_KINDS",
    "SIZE_FRACTIONS",
    "SPLITS",
    "Scene",
    "ScenePlan",
    "Shape",
    "WORD_PATTERN",
    "all_questions",
    "answer_matches",
    "color_areas",
    "count_small",
    "dominant_color_answer",
    "generate_split",
    "has_small_x",
    "heavier_half_answer",
    "label_map",
    "main",
    "normalize_answer",
    "parse_args",
    "quadrant_answers",
    "quadrant_box",
    "render",
    "sample_scene",
    "score",
    "shape_side",
    "split_words",
    "vocabulary",
]
