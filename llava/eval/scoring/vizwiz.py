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

import argparse
import logging
from pathlib import Path
from typing import Any

from llava.eval.scoring.common import (
    ScoringError,
    print_metrics,
    read_answers,
    read_json,
    read_jsonl,
    run_cli,
    write_json,
    write_outputs,
)
from llava.eval.scoring.vqa import fill_submission, score_vqa, vqa_results


def read_images(question_file: str | Path) -> dict[str, str]:
    """Image file name per question id (string), in question-file order."""
    images: dict[str, str] = {}
    for number, row in read_jsonl(question_file):
        if "question_id" not in row or "image" not in row:
            raise ScoringError(
                f"{question_file}:{number}: question needs 'question_id' and 'image' (keys: {sorted(row)})"
            )
        qid = str(row["question_id"])
        if qid in images:
            raise ScoringError(f"{question_file}:{number}: duplicate question_id {qid!r}")
        images[qid] = row["image"]
    return images


def load_annotations(path: str | Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Human answers and answer type per image name from a VizWiz annotation list."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ScoringError(f"{path}: expected VizWiz's annotation list [{{'image', 'answers', ...}}]")
    answers: dict[str, list[str]] = {}
    types: dict[str, str] = {}
    for i, entry in enumerate(data):
        try:
            answers[entry["image"]] = [a["answer"] for a in entry["answers"]]
        except (KeyError, TypeError):
            raise ScoringError(
                f"{path}: [{i}] needs 'image' and 'answers' [{{'answer': ...}}], got {entry!r:.160}"
            ) from None
        types[entry["image"]] = entry.get("answer_type", "unknown")
    return answers, types


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
    score = score_vqa(read_answers(answers_file), gt, answers_file, question_file, types)
    return vqa_results("vizwiz", score), score.per_sample


def submission(question_file: str | Path, answers_file: str | Path) -> list[dict[str, str]]:
    """The test-server submission: one `{"image", "answer"}` per test question, in question-file order."""
    images = read_images(question_file)
    filled = fill_submission(list(images), read_answers(answers_file), answers_file, question_file)
    return [{"image": image, "answer": filled[qid]} for qid, image in images.items()]


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="accuracy against the annotated val split")
    score.add_argument("--annotation-file", required=True, help="VizWiz val.json")
    score.add_argument("--question-file", required=True, help="LLaVA question JSONL (question_id, image)")
    score.add_argument("--answers", required=True)
    score.add_argument("--output", help="write results.json here")
    score.add_argument("--per-sample", help="write {question_id: accuracy} here (for the oracle sweep)")
    submit = commands.add_parser("submit", help="write the test submission JSON")
    submit.add_argument("--question-file", required=True, help="LLaVA test question JSONL (question_id, image)")
    submit.add_argument("--answers", required=True)
    submit.add_argument("--output", required=True, help="submission JSON to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "submit":
        entries = submission(args.question_file, args.answers)
        write_json(args.output, entries, indent=None)
        print(f"wrote {len(entries)} answers to {args.output}")
        return None
    results, per_sample = evaluate(args.annotation_file, args.question_file, args.answers)
    print_metrics(f"VizWiz {args.answers}", {"accuracy": results["score"], **results["accuracy_per_answer_type"]})
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
