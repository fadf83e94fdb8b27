"""M3-Shapes as lmms-eval tasks: the local data they read and the functions their YAML files name.

    python -m llava.eval.lmms_eval_plugin.shapes_task [--out playground/data/lmms_eval/m3_shapes] [--num-images 30]
    lmms-eval --model llava_m3 --model_args pretrained=playground/shapes-m3-tiny,matryoshka_vis_token_scale=36 \\
        --include_path llava/eval/lmms_eval_plugin/tasks --tasks m3_shapes --output_path ...

The command writes the first `--num-images` images of the held-out split (the same seed, hence the
same images and questions, as `llava.eval.shapes_demo --num-images N`) and `test.parquet` beside
them: one row per question, with its image, the columns `id`, `image`, `question`, `answer`,
`question_type`, `difficulty`. It needs the `datasets` package (an lmms-eval dependency), which writes
the image column as an image feature that lmms-eval decodes and leaves out of its sample logs.

Tasks (`tasks/m3_shapes/`):
- `m3_shapes`: the question is asked, the generated answer is scored as `llava.eval.shapes_demo` scores
  it (`llava.data.shapes.answer_matches`: the gold single word, ignoring case and punctuation);
- `m3_shapes_mc`: the options are every answer the question type can have (`llava.data.shapes.ANSWERS`),
  ranked by the model's loglikelihoods: lmms-eval's `multiple_choice` path.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from llava.data import shapes

DEFAULT_OUT = Path("playground/data/lmms_eval/m3_shapes")
"""Where the task YAML files look for `test.parquet` (relative to the repository root)."""
DEFAULT_NUM_IMAGES = 30


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    return list(shapes.ANSWERS[doc["question_type"]])


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """`m3_shapes`' metric: 1.0 when the generated answer is the gold one, as `shapes.score` counts it."""
    return {"accuracy": float(shapes.answer_matches(results[0], doc["answer"]))}


def task_rows(records: Sequence[dict[str, Any]], data_dir: Path) -> list[dict[str, Any]]:
    """One parquet row per M3-Shapes record (image as PNG bytes, the question without its `<image>` marker)."""
    return [
        {
            "id": record["id"],
            "image": {"bytes": (data_dir / record["image"]).read_bytes(), "path": record["image"]},
            "question": record["conversations"][0]["value"].replace("<image>", "").strip(),
            "answer": record["conversations"][1]["value"],
            "question_type": record["question_type"],
            "difficulty": record["difficulty"],
        }
        for record in records
    ]


def write_task_data(out_dir: str | Path, num_images: int, image_size: int = shapes.DEFAULT_IMAGE_SIZE) -> Path:
    """Write the held-out split's first `num_images` images and their `test.parquet` under out_dir."""
    try:
        import datasets  # lmms-eval's dependency, not this package's: needed only to write the task data
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "writing the M3-Shapes task data needs `datasets`, which comes with lmms-eval: run this in the "
            "lmms-eval environment (docs/Evaluation.md, 'Installing lmms-eval on CPU')",
            name=e.name,
        ) from e

    out_dir = Path(out_dir)
    records = shapes.generate_split(out_dir, "test", num_images, shapes.DEFAULT_SEEDS["test"], image_size)
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "difficulty": datasets.Value("string"),
        }
    )
    path = out_dir / "test.parquet"
    datasets.Dataset.from_list(task_rows(records, out_dir), features=features).to_parquet(str(path))
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Write the local data of the lmms-eval tasks m3_shapes(_mc).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the task YAML files read DEFAULT_OUT")
    parser.add_argument(
        "--num-images", type=int, default=DEFAULT_NUM_IMAGES, help="held-out images (4-7 questions each)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=shapes.DEFAULT_IMAGE_SIZE,
        help="scene size in pixels (the model's tower size)",
    )
    args = parser.parse_args(argv)
    return write_task_data(args.out, args.num_images, args.image_size)


if __name__ == "__main__":
    main()
