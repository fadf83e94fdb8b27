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

from pathlib import Path
from typing import Any

from llava.eval.scoring.common import ScoringError, read_json, read_question_jsonl, run_cli
from llava.eval.scoring.vqa import evaluate_vqa, fill_submission, human_answers, run_vqa_command, vqa_parser


def load_annotations(path: str | Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Human answers and answer type per question id from an official VQAv2 annotation file."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ScoringError(f"{path}: expected a VQA annotation file {{'annotations': [...]}}")
    return human_answers(data["annotations"], "question_id", path, where="annotations")


def read_question_ids(path: str | Path) -> list[Any]:
    """Question ids, in file order, from a LLaVA question JSONL or an official `{"questions": [...]}` file."""
    if str(path).endswith(".jsonl"):
        return list(read_question_jsonl(path))
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
    filled = fill_submission([str(q) for q in ids], answers_file, question_file)
    return [{"question_id": int(q), "answer": filled[str(q)]} for q in ids]


def evaluate(annotation_file: str | Path, answers_file: str | Path) -> tuple[dict[str, Any], dict[str, float]]:
    """Results (percent, overall and per answer type) and the per-question accuracy of one answers file."""
    gt, types = load_annotations(annotation_file)
    return evaluate_vqa("vqav2", answers_file, gt, annotation_file, types)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = vqa_parser(
        __doc__.split("\n")[0],
        score=("accuracy against an annotated split", {"--annotation-file": None}),
        submit=("write the test-dev submission JSON", "test2015 questions (LLaVA JSONL or official JSON)"),
    )
    args = parser.parse_args(argv)
    return run_vqa_command(args, "VQAv2", lambda a: evaluate(a.annotation_file, a.answers), submission)


if __name__ == "__main__":
    run_cli(main)
