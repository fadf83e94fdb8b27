"""M3 on a laptop: answer held-out M3-Shapes questions at every visual-token budget.

    python -m llava.eval.shapes_demo [--model-path playground/shapes-m3-tiny] [--num-images 60]

Generates the held-out split (seeded, a few seconds), loads the checkpoint with
`load_pretrained_model` and answers every question with batched `generate` at each budget
(576 / 144 / 36 / 9 / 1 visual tokens), exactly as users call the model. The image is encoded once
per batch and pooled to each budget. Prints accuracy by question type and difficulty × budget and
writes `shapes_accuracy.png` (accuracy against visual tokens) and `shapes_results.json` to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.data import shapes
from llava.generation import Generator, PromptBatch, SamplingParams
from llava.mm_utils import get_model_name_from_path
from llava.model.builder import load_pretrained_model
from llava.model.matryoshka import TRAINED_SCALES, parse_scales
from llava.optional import optional_dependency

with optional_dependency():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = "playground/shapes-m3-tiny"
ROWS = (*shapes.DIFFICULTIES, *shapes.QUESTION_TYPES)


@torch.no_grad()
def answer_all(
    records: Sequence[dict],
    image_folder: Path,
    generator: Generator,
    scales: Sequence[int],
    batch_size: int = 64,
) -> dict[int, dict[str, str]]:
    """Predictions per scale: {scale: {record id: answer text}}; each batch's images are encoded once."""
    params = SamplingParams(temperature=0, max_new_tokens=3)
    predictions: dict[int, dict[str, str]] = {scale: {} for scale in scales}
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        images = [Image.open(image_folder / r["image"]).convert("RGB") for r in batch]
        encoded = generator.encode(generator.pixels(images))
        questions = [r["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip() for r in batch]
        input_ids = [generator.tokenize(generator.prompt(question, 1)) for question in questions]
        for scale in scales:
            answers = generator.answer(PromptBatch(input_ids, encoded), scale, params)
            for record, answer in zip(batch, answers):
                predictions[scale][record["id"]] = answer
    return predictions


def evaluate(
    model_path: str | Path,
    data_dir: str | Path,
    num_images: int,
    scales: Sequence[int] = TRAINED_SCALES,
    seed: int = shapes.DEFAULT_SEEDS["test"],
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[int, dict]:
    """Score a checkpoint on the first `num_images` held-out images: {scale: shapes.score(...)}."""
    data_dir = Path(data_dir)
    name = get_model_name_from_path(str(model_path))
    tokenizer, model, image_processor, _ = load_pretrained_model(str(model_path), None, name, device=device)
    records = shapes.generate_split(data_dir, "test", num_images, seed, model.get_vision_tower().image_size)
    generator = Generator(tokenizer, model, image_processor, name)
    predictions = answer_all(records, data_dir, generator, scales, batch_size)
    return {scale: shapes.score(records, predictions[scale]) for scale in scales}


def accuracy_table(results: dict[int, dict]) -> str:
    """Markdown table: rows = overall, difficulties, question types; columns = visual tokens."""
    scales = sorted(results, reverse=True)
    lines = ["| questions (n) | " + " | ".join(str(s) for s in scales) + " |", "|---|" + "---:|" * len(scales)]
    first = results[scales[0]]
    for row in ("overall", *ROWS):
        if row == "overall":
            total, cells = first["total"], [results[s]["accuracy"] for s in scales]
        else:
            group = "by_difficulty" if row in shapes.DIFFICULTIES else "by_question_type"
            if row not in first[group]:
                continue
            total, cells = first[group][row]["total"], [results[s][group][row]["accuracy"] for s in scales]
        name = f"**{row}**" if row == "overall" or row in shapes.DIFFICULTIES else row
        lines.append(f"| {name} ({total}) | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[int, dict], path: str | Path, title: str) -> None:
    """Accuracy against visual tokens (log x): overall and one line per difficulty."""
    scales = sorted(results)
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.plot(scales, [100 * results[s]["accuracy"] for s in scales], marker="o", linewidth=2.5, label="overall")
    for difficulty in shapes.DIFFICULTIES:
        if difficulty in results[scales[0]]["by_difficulty"]:
            values = [100 * results[s]["by_difficulty"][difficulty]["accuracy"] for s in scales]
            ax.plot(scales, values, marker="o", linestyle="--", label=difficulty)
    ax.set_xscale("log")
    ax.set_xticks(scales, [str(s) for s in scales])
    ax.minorticks_off()
    ax.set_ylim(0, 100)
    ax.set_xlabel("visual tokens per image")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    figure.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Accuracy of an M3 checkpoint on M3-Shapes at every visual-token budget."
    )
    parser.add_argument("--model-path", default=DEFAULT_MODEL_PATH)
    parser.add_argument(
        "--num-images",
        type=int,
        default=shapes.DEFAULT_NUM_IMAGES["test"],
        help="held-out images to answer (each has 4-7 questions)",
    )
    parser.add_argument("--scales", default=",".join(str(s) for s in sorted(TRAINED_SCALES, reverse=True)))
    parser.add_argument("--data-dir", type=Path, default=Path("playground/data/shapes-demo"))
    parser.add_argument("--out-dir", type=Path, default=Path("playground/data/shapes-demo"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[int, dict]:
    args = parse_args(argv)
    scales = parse_scales(args.scales)
    start = time.perf_counter()
    results = evaluate(
        args.model_path, args.data_dir, args.num_images, scales, batch_size=args.batch_size, device=args.device
    )
    elapsed = time.perf_counter() - start
    total = results[scales[0]]["total"]
    print(
        f"\nM3-Shapes ({shapes.DATA_VERSION}, held-out split, {args.num_images} images, {total} questions), "
        f"{args.model_path}: accuracy (%) by visual tokens per image\n"
    )
    print(accuracy_table(results))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot(results, args.out_dir / "shapes_accuracy.png", f"M3-Shapes: {Path(args.model_path).name}")
    with open(args.out_dir / "shapes_results.json", "w", encoding="utf-8") as f:
        json.dump(
            {
                "model_path": str(args.model_path),
                "data_version": shapes.DATA_VERSION,
                "num_images": args.num_images,
                "results": {str(s): r for s, r in results.items()},
            },
            f,
            indent=1,
        )
    print(
        f"plot: {args.out_dir / 'shapes_accuracy.png'}   results: {args.out_dir / 'shapes_results.json'}   "
        f"({elapsed:.0f} s for {total} questions x {len(scales)} budgets)"
    )
    return results


if __name__ == "__main__":
    main()
