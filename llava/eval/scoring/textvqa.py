"""TextVQA accuracy: the VQA 10-annotator accuracy against the TextVQA annotation file.

    python -m llava.eval.scoring.textvqa --annotation-file TextVQA_0.5.1_val.json \\
        --answers answers.jsonl [--output results.json] [--per-sample per_sample.json]

The annotation file is TextVQA's release format, `{"data": [{"question_id", "image_id",
"question", "answers": [10 strings]}, ...]}`. Answers are matched to annotations by `question_id`
(LLaVA's original question file reused the image id as question id and matched on the question
text instead; our question files carry TextVQA's own question ids).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from llava.eval.scoring.common import (
    ScoringError,
    add_output_arguments,
    print_metrics,
    read_json,
    run_cli,
    write_outputs,
)
from llava.eval.scoring.vqa import evaluate_vqa


def load_annotations(path: str | Path) -> dict[str, list[str]]:
    """Human answers keyed by question id (as a string) from a TextVQA annotation file."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ScoringError(f"{path}: expected a TextVQA annotation file {{'data': [...]}}")
    gt: dict[str, list[str]] = {}
    for i, entry in enumerate(data["data"]):
        if not isinstance(entry, dict) or "question_id" not in entry or "answers" not in entry:
            raise ScoringError(f"{path}: data[{i}] needs 'question_id' and 'answers', got {entry!r:.120}")
        answers = entry["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise ScoringError(f"{path}: data[{i}] (question_id {entry['question_id']!r}) has answers {answers!r}")
        gt[str(entry["question_id"])] = answers
    return gt


def evaluate(annotation_file: str | Path, answers_file: str | Path) -> tuple[dict[str, Any], dict[str, float]]:
    """Results (accuracy in percent) and the per-question accuracy of one answers file."""
    return evaluate_vqa("textvqa", answers_file, load_annotations(annotation_file), annotation_file)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--answers", required=True, help="LLaVA answers JSONL")
    add_output_arguments(parser, "{question_id: accuracy}")
    args = parser.parse_args(argv)

    results, per_sample = evaluate(args.annotation_file, args.answers)
    print_metrics(f"TextVQA {args.answers}", {"accuracy": results["score"], "samples": results["num_answered"]})
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
