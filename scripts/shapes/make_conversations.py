"""Regroup an M3-Shapes training split into one multi-turn conversation per image, plus a scene caption.

    python scripts/shapes/make_conversations.py --data DIR [--split train] [--seed 0]

Writes DIR/<split>_conversations.json. Each record holds every question of one image as its own
turn (in a seeded random order, so every question type is sometimes the first turn, as at test
time), followed by one more turn: "Describe the scene." answered by a caption that lists the
background, the number of shapes and every shape (size, colour, kind, quadrant) in reading order.

Why: with one question per sample a step supervises one answer token per 600-token forward pass,
and the tiny model stayed on the answer-prior plateau. A conversation supervises all 4-7 answers
of the image plus ~30 caption tokens for about the same compute, and the caption is a dense
per-shape (auxiliary) target that makes the model look at every shape, not only at the background.
The caption turn comes last, so no answer can be copied from it. The test split is not touched.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llava.data.shapes import QUADRANTS, SHAPE_COLORS, SHAPE_KINDS, SIZE_FRACTIONS, split_words

CAPTION_QUESTION = "Describe the scene."
KIND_WORDS = {"circle": "circle", "square": "square", "triangle": "triangle", "x": "X"}


def quadrant_of(bbox: Sequence[int], image_size: int) -> str:
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    mid = image_size / 2
    return f"{'top' if cy < mid else 'bottom'} {'left' if cx < mid else 'right'}"


def caption(scene: dict) -> str:
    """'navy background , 2 shapes : large red X bottom right , small blue square top left .'"""
    size = scene["image_size"]
    band = size // 4
    shapes = sorted(scene["shapes"], key=lambda s: ((s["bbox"][1] + s["bbox"][3]) // 2 // band, s["bbox"][0]))
    parts = [f"{s['size']} {s['color']} {KIND_WORDS[s['kind']]} {quadrant_of(s['bbox'], size)}" for s in shapes]
    noun = "shape" if len(shapes) == 1 else "shapes"
    return f"{scene['background']} background , {len(shapes)} {noun} : " + " , ".join(parts) + " ."


def caption_words() -> list[str]:
    """Every word a caption can use (for the tokenizer)."""
    words = {"background", "shape", "shapes", ":", ",", "."} | set(split_words(CAPTION_QUESTION))
    words |= set(SIZE_FRACTIONS) | set(SHAPE_COLORS) | {KIND_WORDS[k] for k in SHAPE_KINDS}
    words |= {w for q in QUADRANTS for w in q.split()}
    return sorted(words)


def conversations(records: list[dict], scenes: list[dict], seed: int) -> list[dict]:
    rng = np.random.Generator(np.random.PCG64(seed))
    by_image: dict[str, list[dict]] = {}
    for record in records:
        by_image.setdefault(record["image"], []).append(record)
    out = []
    for scene in scenes:
        questions = by_image.get(scene["image"], [])
        order = rng.permutation(len(questions))
        turns = []
        for i, j in enumerate(order):
            human, gpt = questions[j]["conversations"]
            text = human["value"].replace("<image>", "").strip()
            turns += [{"from": "human", "value": f"<image>\n{text}" if i == 0 else text}, dict(gpt)]
        first = "<image>\n" if not turns else ""
        turns += [{"from": "human", "value": first + CAPTION_QUESTION}, {"from": "gpt", "value": caption(scene)}]
        out.append({"id": Path(scene["image"]).stem, "image": scene["image"], "conversations": turns})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    records = json.loads((args.data / f"{args.split}.json").read_text())
    scenes = json.loads((args.data / f"{args.split}_scenes.json").read_text())
    out = conversations(records, scenes, args.seed)
    path = args.data / f"{args.split}_conversations.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(out)} conversations ({len(records)} questions + {len(out)} captions) to {path}")


if __name__ == "__main__":
    main()
