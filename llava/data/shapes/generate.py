"""The data-set writer and its command line: `python -m llava.data.shapes --out DIR --split train`.

Output of `generate_split(out_dir, split, num_images, seed)`::

    out_dir/images/<split>_<idx>.png
    out_dir/<split>.json          one LLaVA record per (image, question)
    out_dir/<split>_scenes.json   the scene behind each image (shapes, colours, pixel boxes)
    out_dir/<split>_meta.json     DATA_VERSION, seed, counts and answer histograms

Determinism: one `numpy.random.Generator(PCG64(seed))` drives every choice of every image in turn
(plan, scene, questions), and JSON is written with a fixed key order, so the same seed gives
byte-identical JSON and identical pixels.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from llava.data.shapes.answers import scene_questions
from llava.data.shapes.balance import AnswerBalancer, make_plan
from llava.data.shapes.drawing import label_map, render
from llava.data.shapes.questions import ANSWERS, DIFFICULTIES, QUESTION_TYPES
from llava.data.shapes.scene import DEFAULT_IMAGE_SIZE, Scene, check_image_size, sample_scene

DATA_VERSION = "shapes-v1"

SPLITS = ("train", "test")
DEFAULT_SEEDS = {"train": 1234, "test": 98765}
DEFAULT_NUM_IMAGES = {"train": 2000, "test": 300}


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
    check_image_size(image_size)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(seed))
    balancer = AnswerBalancer()
    records, scenes = [], []
    for idx in range(num_images):
        plan = make_plan(rng, balancer)
        scene = sample_scene(rng, plan, image_size)
        labels = label_map(scene)
        render(scene, labels).save(out_dir / "images" / f"{split}_{idx}.png", format="PNG")
        scenes.append(_scene_record(split, idx, scene))
        for qtype, question, answer in scene_questions(rng, scene, labels, plan, balancer):
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m llava.data.shapes",
        description=f"Generate the synthetic M3-Shapes visual-QA set ({DATA_VERSION}).",
    )
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
