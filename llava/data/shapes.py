"""M3-Shapes: a deterministic synthetic visual-QA set in the LLaVA conversation format.

Each image is a square scene (default 96 px) with a solid background and 1-6 non-overlapping shapes
(circle, square, triangle, X) in two sizes. Every image gets 4-7 single-word questions that need
different amounts of visual detail, so accuracy per difficulty shows what each M3 token budget keeps:

- coarse: background colour, which half holds more shape pixels, the dominant shape colour;
- medium: the colour of the one shape in a quadrant;
- fine:   number of shapes, number of small shapes of a colour, whether there is a small X.

Output of `generate_split(out_dir, split, num_images, seed)`::

    out_dir/images/<split>_<idx>.png
    out_dir/<split>.json          one LLaVA record per (image, question)
    out_dir/<split>_scenes.json   the scene behind each image (shapes, colours, pixel boxes)
    out_dir/<split>_meta.json     DATA_VERSION, seed, counts and answer histograms

Determinism: one `numpy.random.Generator(PCG64(seed))` drives everything, shapes are drawn with
PIL ImageDraw on a label map (no antialiasing) and coloured from a fixed palette, and JSON is written
with a fixed key order, so the same seed gives byte-identical JSON and identical pixels.

Unambiguous answers: shape boxes never touch (rejection sampling with a bounded number of tries);
"more filled" is asked only when one half has at least `HALF_RATIO` times the other's shape pixels;
the dominant colour only when it has at least `DOMINANT_RATIO` times the runner-up's pixels; a
quadrant only when exactly one shape box lies fully inside it and no other shape box reaches into it.

Balancing: every question type keeps a histogram of the answers emitted so far, and each new
scene is *built* to give the least-used answer (ties broken by the seeded generator): the
background colour, the number of shapes, the heavier half, whether there is a small X, the number of
small shapes of the asked colour (0-3, among values that fit the shape count) and the colour of one
free shape (which often makes it the dominant colour) are chosen this way before the shapes are
placed. Quadrant questions pick, among the quadrants that are unambiguous, one whose colour is least
used so far. Shape colours are otherwise uniform, so the colour answers are balanced by symmetry.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DATA_VERSION = "shapes-v1"

SPLITS = ("train", "test")
DEFAULT_SEEDS = {"train": 1234, "test": 98765}
DEFAULT_NUM_IMAGES = {"train": 2000, "test": 300}
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
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")

MAX_SHAPES = 6
MAX_SMALL_COLOR_COUNT = 3
HALF_RATIO = 2.0
DOMINANT_RATIO = 1.5
# Filler shapes (those not fixed by the plan) are large with this probability.
P_LARGE = 0.4
# Shapes after the first go to the planned heavier half with this probability.
P_HEAVY_HALF = 0.75
PLACEMENT_TRIES = 50
LAYOUT_TRIES = 100

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
_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}


@dataclass(frozen=True)
class Shape:
    """One shape; `bbox` is (x0, y0, x1, y1) in pixels, inclusive, and holds every pixel drawn."""

    kind: str
    color: str
    size: str
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]
    image_size: int


@dataclass(frozen=True)
class ScenePlan:
    """Answers a scene is built to produce (see the module docstring on balancing)."""

    background: str
    num_shapes: int
    heavy_half: str
    small_x: bool
    count_color: str
    small_count: int
    dominant_color: str


class _AnswerBalancer:
    """Per question type histogram of emitted answers; `choose` returns a least-used option."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {qtype: Counter() for qtype in QUESTION_TYPES}

    def choose(self, rng: np.random.Generator, qtype: str, options: Sequence[str]) -> str:
        least = min(self.counts[qtype][option] for option in options)
        tied = [option for option in options if self.counts[qtype][option] == least]
        return tied[int(rng.integers(len(tied)))]

    def record(self, qtype: str, answer: str) -> None:
        self.counts[qtype][answer] += 1


# ---------------------------------------------------------------------------------------------
# Scenes


def shape_side(size: str, image_size: int) -> int:
    return round(SIZE_FRACTIONS[size] * image_size)


def _check_image_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE or image_size % 2:
        raise ValueError(f"image_size must be an even number >= {MIN_IMAGE_SIZE}, got {image_size}")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _make_plan(rng: np.random.Generator, balancer: _AnswerBalancer) -> ScenePlan:
    num_shapes = int(balancer.choose(rng, "count_shapes", ANSWERS["count_shapes"]))
    possible_counts = ANSWERS["count_small_color"][: min(num_shapes, MAX_SMALL_COLOR_COUNT) + 1]
    return ScenePlan(
        background=balancer.choose(rng, "background_color", ANSWERS["background_color"]),
        num_shapes=num_shapes,
        heavy_half=balancer.choose(rng, "heavier_half", ANSWERS["heavier_half"]),
        small_x=balancer.choose(rng, "small_x", ANSWERS["small_x"]) == "yes",
        count_color=_pick(rng, tuple(SHAPE_COLORS)),
        small_count=int(balancer.choose(rng, "count_small_color", possible_counts)),
        dominant_color=balancer.choose(rng, "dominant_color", ANSWERS["dominant_color"]),
    )


def _shape_specs(rng: np.random.Generator, plan: ScenePlan) -> list[tuple[str, str, str]]:
    """(kind, colour, size) per shape, large ones first, honouring the plan's counts."""
    plain_kinds = tuple(kind for kind in SHAPE_KINDS if kind != "x")
    other_colors = tuple(color for color in SHAPE_COLORS if color != plan.count_color)
    specs = [(_pick(rng, plain_kinds), plan.count_color, "small") for _ in range(plan.small_count)]
    if plan.small_x:
        if specs and (len(specs) == plan.num_shapes or rng.random() < 0.5):
            specs[0] = ("x", plan.count_color, "small")
        else:
            specs.append(("x", _pick(rng, other_colors), "small"))
    for i in range(plan.num_shapes - len(specs)):
        size = "large" if rng.random() < P_LARGE else "small"
        kind = _pick(rng, SHAPE_KINDS if size == "large" or plan.small_x else plain_kinds)
        colors = tuple(SHAPE_COLORS) if size == "large" else other_colors
        color = plan.dominant_color if i == 0 and plan.dominant_color in colors else _pick(rng, colors)
        specs.append((kind, color, size))
    # Large shapes first: they are the hardest to place, and the first one anchors the heavier half.
    specs.sort(key=lambda spec: spec[2] != "large")
    return specs


def _separated(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]


def _try_box(
    rng: np.random.Generator, side: int, x_range: tuple[int, int], image_size: int, placed: list[Shape]
) -> tuple[int, int, int, int] | None:
    """A random box of `side` px with x0 in x_range (inclusive) that keeps its gap to `placed`."""
    margin = gap = max(2, image_size // 48)
    if x_range[1] < x_range[0]:
        return None
    for _ in range(PLACEMENT_TRIES):
        x0 = int(rng.integers(x_range[0], x_range[1] + 1))
        y0 = int(rng.integers(margin, image_size - margin - side + 1))
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        if all(_separated(box, shape.bbox, gap) for shape in placed):
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


# ---------------------------------------------------------------------------------------------
# Rendering


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


# ---------------------------------------------------------------------------------------------
# Answers, each derived from the scene (and its label map where pixel areas matter)


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


def quadrant_box(quadrant: str, image_size: int) -> tuple[int, int, int, int]:
    mid = image_size // 2
    top = quadrant.startswith("top")
    left = quadrant.endswith("left")
    return (
        0 if left else mid,
        0 if top else mid,
        mid - 1 if left else image_size - 1,
        mid - 1 if top else image_size - 1,
    )


def _contains(outer: tuple[int, int, int, int], inner: tuple[int, int, int, int]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def quadrant_answers(scene: Scene) -> dict[str, str]:
    """Colour per quadrant that holds exactly one whole shape box and meets no other shape box."""
    answers = {}
    for quadrant in QUADRANTS:
        box = quadrant_box(quadrant, scene.image_size)
        inside = [shape for shape in scene.shapes if _contains(box, shape.bbox)]
        touching = [shape for shape in scene.shapes if not _separated(box, shape.bbox, 0)]
        if len(inside) == 1 and len(touching) == 1:
            answers[quadrant] = inside[0].color
    return answers


def count_small(scene: Scene, color: str) -> int:
    return sum(shape.size == "small" and shape.color == color for shape in scene.shapes)


def has_small_x(scene: Scene) -> bool:
    return any(shape.size == "small" and shape.kind == "x" for shape in scene.shapes)


def _questions(
    rng: np.random.Generator, scene: Scene, labels: np.ndarray, plan: ScenePlan, balancer: _AnswerBalancer
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
    rng: np.random.Generator, scene: Scene, balancer: _AnswerBalancer
) -> tuple[dict[str, str], str | None]:
    answers = quadrant_answers(scene)
    if not answers:
        return {}, None
    color = balancer.choose(rng, "quadrant_color", sorted(set(answers.values()), key=list(SHAPE_COLORS).index))
    quadrant = _pick(rng, [quadrant for quadrant, answer in answers.items() if answer == color])
    return {"quadrant": quadrant}, color


# ---------------------------------------------------------------------------------------------
# Split generation


def _record(split: str, idx: int, qtype: str, question: str, answer: str) -> dict:
    return {
        "id": f"{split}_{idx}_{qtype}",
        "image": f"images/{split}_{idx}.png",
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
        "question_type": qtype,
        "difficulty": QUESTION_TYPES[qtype],
    }


def _scene_record(split: str, idx: int, scene: Scene) -> dict:
    return {
        "image": f"images/{split}_{idx}.png",
        "image_size": scene.image_size,
        "background": scene.background,
        "shapes": [{**asdict(shape), "bbox": list(shape.bbox)} for shape in scene.shapes],
    }


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")


def generate_split(
    out_dir: str | Path, split: str, num_images: int, seed: int, image_size: int = DEFAULT_IMAGE_SIZE
) -> list[dict]:
    """Write one split of M3-Shapes under out_dir (layout in the module docstring); return its records."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    _check_image_size(image_size)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    balancer = _AnswerBalancer()
    records, scenes = [], []
    for idx in range(num_images):
        plan = _make_plan(rng, balancer)
        scene = sample_scene(rng, plan, image_size)
        labels = label_map(scene)
        render(scene, labels).save(out_dir / "images" / f"{split}_{idx}.png", format="PNG")
        scenes.append(_scene_record(split, idx, scene))
        for qtype, question, answer in _questions(rng, scene, labels, plan, balancer):
            balancer.record(qtype, answer)
            records.append(_record(split, idx, qtype, question, answer))
    _write_json(out_dir / f"{split}.json", records)
    _write_json(out_dir / f"{split}_scenes.json", scenes)
    _write_json(out_dir / f"{split}_meta.json", _meta(split, seed, image_size, num_images, records))
    return records


def _meta(split: str, seed: int, image_size: int, num_images: int, records: list[dict]) -> dict:
    answers: dict[str, Counter[str]] = {qtype: Counter() for qtype in QUESTION_TYPES}
    for record in records:
        answers[record["question_type"]][record["conversations"][1]["value"]] += 1
    return {
        "data_version": DATA_VERSION,
        "split": split,
        "seed": seed,
        "image_size": image_size,
        "num_images": num_images,
        "num_records": len(records),
        "question_type_counts": {qtype: sum(answers[qtype].values()) for qtype in QUESTION_TYPES},
        "difficulty_counts": {d: sum(1 for r in records if r["difficulty"] == d) for d in DIFFICULTIES},
        "answer_counts": {qtype: {a: answers[qtype][a] for a in ANSWERS[qtype]} for qtype in QUESTION_TYPES},
    }


# ---------------------------------------------------------------------------------------------
# Vocabulary and scoring


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


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation dropped, whitespace collapsed, number words as digits ("Three." -> "3")."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(word, word) for word in words)


def answer_matches(pred: str, gold: str) -> bool:
    """Whether a prediction is the gold single-word answer, ignoring case and punctuation."""
    return normalize_answer(pred) == normalize_answer(gold)


def _accuracy(correct: int, total: int) -> dict:
    return {"accuracy": correct / total if total else 0.0, "correct": correct, "total": total}


def score(records: Sequence[dict], predictions: dict[str, str]) -> dict:
    """Accuracy overall, per difficulty and per question type; a missing prediction counts as wrong."""
    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    missing = 0
    for record in records:
        pred = predictions.get(record["id"])
        missing += pred is None
        ok = pred is not None and answer_matches(pred, record["conversations"][1]["value"])
        for key in ("all", record["difficulty"], record["question_type"]):
            total[key] += 1
            correct[key] += ok
    return {
        **_accuracy(correct["all"], total["all"]),
        "missing": missing,
        "by_difficulty": {d: _accuracy(correct[d], total[d]) for d in DIFFICULTIES if total[d]},
        "by_question_type": {q: _accuracy(correct[q], total[q]) for q in QUESTION_TYPES if total[q]},
    }


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"Generate the synthetic M3-Shapes visual-QA set ({DATA_VERSION}).")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--num-images", type=int, default=None, help=f"default: {DEFAULT_NUM_IMAGES}")
    parser.add_argument("--seed", type=int, default=None, help=f"default per split: {DEFAULT_SEEDS}")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    seed = DEFAULT_SEEDS[args.split] if args.seed is None else args.seed
    num_images = DEFAULT_NUM_IMAGES[args.split] if args.num_images is None else args.num_images
    records = generate_split(args.out, args.split, num_images, seed, args.image_size)
    print(f"wrote {len(records)} questions on {num_images} images to {args.out / (args.split + '.json')}")


if __name__ == "__main__":
    main()
