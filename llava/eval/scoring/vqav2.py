"""VQAv2: local accuracy on an annotated split, and the test-dev submission file for EvalAI.

    python -m llava.eval.scoring.vqav2 score --annotation-file v2_mscoco_val2014_annotations.json \\
        --answers answers.jsonl [--output results.json] [--per-sample per_sample.json]
    python -m llava.eval.scoring.vqav2 submit --question-file llava_vqav2_mscoco_test2015.jsonl \\
        --answers answers.jsonl --output submission.json

`score` reads the official annotation file `{"annotations": [{"question_id", "answer_type",
"answers": [{"answer": ...} x10]}]}` and reports the accuracy overall and per answer type
(yes/no, number, other). `submit` writes `[{"question_id": int, "answer": str}]` with one entry per
question of the test question file (LLaVA's JSONL with `question_id`, or the official
`{"questions": [...]}` JSON): answers are normalised, unanswered questions get "" and a warning,
since EvalAI rejects a test-dev submission that lacks any test2015 question.
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


def load_annotations(path: str | Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Human answers and answer type per question id from an official VQAv2 annotation file."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ScoringError(f"{path}: expected a VQA annotation file {{'annotations': [...]}}")
    answers: dict[str, list[str]] = {}
    types: dict[str, str] = {}
    for i, entry in enumerate(data["annotations"]):
        try:
            qid = str(entry["question_id"])
            answers[qid] = [a["answer"] for a in entry["answers"]]
        except (KeyError, TypeError):
            raise ScoringError(
                f"{path}: annotations[{i}] needs 'question_id' and 'answers' [{{'answer': ...}}], got {entry!r:.160}"
            ) from None
        if not answers[qid]:
            raise ScoringError(f"{path}: annotations[{i}] (question_id {qid}) has no answers")
        types[qid] = entry.get("answer_type", "unknown")
    return answers, types


def read_question_ids(path: str | Path) -> list[Any]:
    """Question ids, in file order, from a LLaVA question JSONL or an official `{"questions": [...]}` file."""
    if str(path).endswith(".jsonl"):
        rows = read_jsonl(path)
        for number, row in rows:
            if "question_id" not in row:
                raise ScoringError(f"{path}:{number}: question has no 'question_id' (keys: {sorted(row)})")
        return [row["question_id"] for _, row in rows]
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ScoringError(f"{path}: expected LLaVA question JSONL or a VQA questions file {{'questions': [...]}}")
    return [q["question_id"] for q in data["questions"]]


def submission(question_file: str | Path, answers_file: str | Path) -> list[dict[str, Any]]:
    """The EvalAI submission: one `{"question_id", "answer"}` per test question, in question-file order."""
    ids = read_question_ids(question_file)
    for q in ids:
        if isinstance(q, bool) or not str(q).isdigit():
            raise ScoringError(f"{question_file}: VQAv2 question ids are integers, got {q!r}")
    filled = fill_submission([str(q) for q in ids], read_answers(answers_file), answers_file, question_file)
    return [{"question_id": int(q), "answer": filled[str(q)]} for q in ids]


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="accuracy against an annotated split")
    score.add_argument("--annotation-file", required=True)
    score.add_argument("--answers", required=True)
    score.add_argument("--output", help="write results.json here")
    score.add_argument("--per-sample", help="write {question_id: accuracy} here (for the oracle sweep)")
    submit = commands.add_parser("submit", help="write the test-dev submission JSON")
    submit.add_argument("--question-file", required=True, help="test2015 questions (LLaVA JSONL or official JSON)")
    submit.add_argument("--answers", required=True)
    submit.add_argument("--output", required=True, help="submission JSON to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "submit":
        entries = submission(args.question_file, args.answers)
        write_json(args.output, entries, indent=None)
        print(f"wrote {len(entries)} answers to {args.output}")
        return None
    gt, types = load_annotations(args.annotation_file)
    result = score_vqa(read_answers(args.answers), gt, args.answers, args.annotation_file, types)
    results = vqa_results("vqav2", result)
    print_metrics(f"VQAv2 {args.answers}", {"accuracy": results["score"], **results["accuracy_per_answer_type"]})
    write_outputs(results, result.per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
