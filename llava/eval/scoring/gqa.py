"""GQA: accuracy on the balanced test-dev questions, and the converter to GQA's prediction format.

    python -m llava.eval.scoring.gqa score --questions testdev_balanced_questions.json \\
        --answers answers.jsonl [--output results.json] [--per-sample per_sample.json]
    python -m llava.eval.scoring.gqa convert --answers answers.jsonl \\
        --output testdev_balanced_predictions.json

`--questions` is GQA's question file `{question_id: {"answer", "isBalanced", "types":
{"structural", "semantic", "detailed"}, ...}}`. As in LLaVA's converter, a prediction is the
answer text lowercased with trailing periods removed; GQA's evaluation then needs it to equal the
gold answer exactly. Accuracy is reported over the balanced questions, overall, for open
(structural type "query") and binary (every other structural type) questions, and per
structural and semantic type, like GQA's `eval.py` (its consistency, validity,
plausibility and grounding metrics need the scene graphs and choices files and are not computed).
Every balanced question needs a prediction: a missing one is an error naming it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.eval.scoring.common import (
    Answer,
    ScoringError,
    add_output_arguments,
    mean,
    print_metrics,
    read_answers,
    read_answers_by_id,
    read_json,
    run_cli,
    write_outputs,
    write_submission,
)


def normalize_prediction(text: str) -> str:
    """GQA's answers are lowercase words without a final period: "Yes." -> "yes"."""
    return text.rstrip(".").lower()


def answer_kind(structural_type: str) -> str:
    """GQA's eval.py calls "query" questions open and every other structural type binary."""
    return "open" if structural_type == "query" else "binary"


@dataclass
class GQAScore:
    """Fractions of balanced questions answered exactly right."""

    accuracy: float
    by_kind: dict[str, float]
    by_structural: dict[str, float]
    by_semantic: dict[str, float]
    per_sample: dict[str, bool]


def score(
    predictions: Mapping[str, str], questions: Mapping[str, Mapping[str, Any]], questions_path: str = ""
) -> GQAScore:
    """Score normalised predictions (question id -> answer) on the balanced questions."""
    per_sample: dict[str, bool] = {}
    groups: dict[str, dict[str, list[bool]]] = {name: defaultdict(list) for name in ("kind", "structural", "semantic")}
    for qid, question in questions.items():
        if not question.get("isBalanced", False):
            continue
        if qid not in predictions:
            raise ScoringError(f"balanced question {qid!r} of {questions_path or 'the questions'} has no prediction")
        correct = predictions[qid] == question["answer"]
        per_sample[qid] = correct
        types = question.get("types", {})
        groups["kind"][answer_kind(types.get("structural", ""))].append(correct)
        for name in ("structural", "semantic"):
            groups[name][types.get(name, "unknown")].append(correct)

    def fractions(group: dict[str, list[bool]]) -> dict[str, float]:
        return {name: mean(values) for name, values in sorted(group.items())}

    return GQAScore(
        accuracy=mean(per_sample.values()),
        by_kind=fractions(groups["kind"]),
        by_structural=fractions(groups["structural"]),
        by_semantic=fractions(groups["semantic"]),
        per_sample=per_sample,
    )


def convert(answers: Sequence[Answer]) -> list[dict[str, str]]:
    """GQA's prediction file: `[{"questionId": str, "prediction": str}]` in answers-file order."""
    return [{"questionId": a.question_id, "prediction": normalize_prediction(a.text)} for a in answers]


def load_questions(path: str | Path) -> dict[str, dict[str, Any]]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ScoringError(f"{path}: expected GQA's questions file {{question_id: {{'answer', ...}}}}")
    for qid, question in data.items():
        if not isinstance(question, dict) or "answer" not in question:
            raise ScoringError(f"{path}: question {qid!r} has no 'answer': {question!r:.160}")
    return {str(qid): question for qid, question in data.items()}


def evaluate(questions_file: str | Path, answers_file: str | Path) -> tuple[dict[str, Any], dict[str, bool]]:
    questions = load_questions(questions_file)
    answers = read_answers_by_id(answers_file, questions, f"the questions {questions_file}")
    predictions = {qid: normalize_prediction(answer.text) for qid, answer in answers.items()}
    result = score(predictions, questions, str(questions_file))
    results = {
        "benchmark": "gqa",
        "metric": "accuracy",
        "score": 100.0 * result.accuracy,
        "accuracy_binary_open": {k: 100.0 * v for k, v in result.by_kind.items()},
        "accuracy_per_structural_type": {k: 100.0 * v for k, v in result.by_structural.items()},
        "accuracy_per_semantic_type": {k: 100.0 * v for k, v in result.by_semantic.items()},
        "num_questions": len(result.per_sample),
    }
    return results, result.per_sample


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score_cmd = commands.add_parser("score", help="balanced accuracy, overall and per type")
    score_cmd.add_argument("--questions", required=True, help="testdev_balanced_questions.json")
    score_cmd.add_argument("--answers", required=True)
    add_output_arguments(score_cmd, "{question_id: correct}")
    convert_cmd = commands.add_parser("convert", help="write GQA's predictions JSON for its eval.py")
    convert_cmd.add_argument("--answers", required=True)
    convert_cmd.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    if args.command == "convert":
        write_submission(args.output, convert(read_answers(args.answers)), what="predictions")
        return None
    results, per_sample = evaluate(args.questions, args.answers)
    print_metrics(
        f"GQA {args.answers}",
        {"accuracy": results["score"], **results["accuracy_binary_open"], **results["accuracy_per_structural_type"]},
    )
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
