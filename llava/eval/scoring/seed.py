"""SEED-Bench: multiple-choice accuracy per question type and overall (image questions by default).

    python -m llava.eval.scoring.seed --questions SEED-Bench.json --answers answers.jsonl \\
        [--data-type image|video|all] [--output results.json] [--per-sample per_sample.json]

`SEED-Bench.json` is the release file: `{"question_type": {name: id}, "questions":
[{"question_id", "question_type_id", "answer": "A".."D", "data_type": "image"|"video", ...}]}`.
The letter is parsed from the answer text ("B", "B.", "The answer is B"); an unreadable answer is
wrong (counted in `num_unparsed`), and a question of the chosen data type without an answer is
wrong too (LLaVA's scorer does the same; counted in `num_missing`). Overall accuracy is over all
questions of the data type, so types weigh by their size, as in LLaVA's and SEED's reports.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from llava.eval.scoring.choice import parse_option_letter, read_choices
from llava.eval.scoring.common import (
    ScoringError,
    add_output_arguments,
    percent,
    print_metrics,
    read_answers_by_id,
    read_json,
    run_cli,
    write_outputs,
)


def load_questions(path: str | Path) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The questions and the type name per `question_type_id`."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list) or "question_type" not in data:
        raise ScoringError(f"{path}: expected SEED-Bench's {{'question_type': {{...}}, 'questions': [...]}}")
    type_names = {int(type_id): name for name, type_id in data["question_type"].items()}
    for i, question in enumerate(data["questions"]):
        missing = [k for k in ("question_id", "question_type_id", "answer") if k not in question]
        if missing:
            raise ScoringError(f"{path}: questions[{i}] lacks {missing}")
        if int(question["question_type_id"]) not in type_names:
            raise ScoringError(f"{path}: questions[{i}] has unknown question_type_id {question['question_type_id']!r}")
    return data["questions"], type_names


def evaluate(
    questions_file: str | Path, answers_file: str | Path, data_type: str = "image"
) -> tuple[dict[str, Any], dict[str, bool]]:
    questions, type_names = load_questions(questions_file)
    answers = read_answers_by_id(answers_file, {str(q["question_id"]) for q in questions}, str(questions_file))

    selected = [q for q in questions if data_type == "all" or q.get("data_type", "image") == data_type]
    if not selected:
        raise ScoringError(f"{questions_file}: no questions with data_type {data_type!r}")
    ids = [str(q["question_id"]) for q in selected]
    read = read_choices(answers, ids, f"{data_type} questions", lambda _, text: parse_option_letter(text))
    per_sample: dict[str, bool] = {}
    per_type: dict[int, list[bool]] = defaultdict(list)
    for question in selected:
        qid = str(question["question_id"])
        per_sample[qid] = read.chosen.get(qid) == question["answer"]
        per_type[int(question["question_type_id"])].append(per_sample[qid])
    results = {
        "benchmark": "seed",
        "metric": "accuracy",
        "data_type": data_type,
        "score": percent(sum(per_sample.values()), len(per_sample)),
        "accuracy_per_type": {type_names[t]: percent(sum(per_type[t]), len(per_type[t])) for t in sorted(per_type)},
        "num_questions": len(selected),
        "num_missing": read.missing,
        "num_unparsed": len(read.unreadable),
    }
    return results, per_sample


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", required=True, help="SEED-Bench.json")
    parser.add_argument("--answers", required=True)
    parser.add_argument("--data-type", default="image", choices=("image", "video", "all"))
    add_output_arguments(parser, "{question_id: correct}")
    args = parser.parse_args(argv)

    results, per_sample = evaluate(args.questions, args.answers, args.data_type)
    print_metrics(f"SEED-Bench ({args.data_type}) {args.answers}", {"accuracy": results["score"]})
    for name, value in results["accuracy_per_type"].items():
        print(f"    {name}: {value:.2f}")
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
