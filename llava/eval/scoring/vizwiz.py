"""VizWiz-VQA: local accuracy on the annotated val split, and the test submission file.

    python -m llava.eval.scoring.vizwiz score --annotation-file val.json \\
        --question-file llava_vizwiz_val.jsonl --answers answers.jsonl [--output results.json]
    python -m llava.eval.scoring.vizwiz submit --question-file llava_test.jsonl \\
        --answers answers.jsonl --output submission.json

The question file is LLaVA's JSONL (`question_id`, `image`, `text`); it ties each answer's
`question_id` to its image, which is how VizWiz names questions. `score` reads VizWiz's
annotation list `[{"image", "question", "answers": [{"answer", "answer_confidence"} x10],
"answer_type", "answerable"}]` and reports the VQA accuracy overall and per answer type
(other, yes/no, number, unanswerable). `submit` writes `[{"image": "VizWiz_test_xxx.jpg",
"answer": str}]` in question-file order, answers normalised, "" (with a warning) when unanswered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llava.eval.scoring.common import ScoringError, read_json, read_question_jsonl, run_cli
from llava.eval.scoring.vqa import evaluate_vqa, fill_submission, human_answers, run_vqa_command, vqa_parser


def read_images(question_file: str | Path) -> dict[str, str]:
    """Image file name per question id (string), in question-file order."""
    return {qid: row["image"] for qid, row in read_question_jsonl(question_file, ["image"]).items()}


def load_annotations(path: str | Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Human answers and answer type per image name from a VizWiz annotation list."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ScoringError(f"{path}: expected VizWiz's annotation list [{{'image', 'answers', ...}}]")
    return human_answers(data, "image", path)


def evaluate(
    annotation_file: str | Path, question_file: str | Path, answers_file: str | Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """Results (percent) and per-question accuracy, joining answers to annotations through the image."""
    images = read_images(question_file)
    by_image, types_by_image = load_annotations(annotation_file)
    gt: dict[str, list[str]] = {}
    types: dict[str, str] = {}
    for qid, image in images.items():
        if image not in by_image:
            raise ScoringError(f"{question_file}: question {qid!r} shows image {image!r}, not in {annotation_file}")
        gt[qid], types[qid] = by_image[image], types_by_image[image]
    return evaluate_vqa("vizwiz", answers_file, gt, question_file, types)


def submission(question_file: str | Path, answers_file: str | Path) -> list[dict[str, str]]:
    """The test-server submission: one `{"image", "answer"}` per test question, in question-file order."""
    images = read_images(question_file)
    filled = fill_submission(list(images), answers_file, question_file)
    return [{"image": image, "answer": filled[qid]} for qid, image in images.items()]


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    inputs = {"--annotation-file": "VizWiz val.json", "--question-file": "LLaVA question JSONL (question_id, image)"}
    parser = vqa_parser(
        __doc__.split("\n")[0],
        score=("accuracy against the annotated val split", inputs),
        submit=("write the test submission JSON", "LLaVA test question JSONL (question_id, image)"),
    )
    args = parser.parse_args(argv)
    return run_vqa_command(
        args, "VizWiz", lambda a: evaluate(a.annotation_file, a.question_file, a.answers), submission
    )


if __name__ == "__main__":
    run_cli(main)
