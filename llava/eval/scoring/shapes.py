"""M3-Shapes through the evaluation harness: the question file it reads, and the scorer of its answers.

    python -m llava.eval.scoring.shapes questions --split-file shapes/test.json --output shapes/questions.jsonl
    python -m llava.eval.model_vqa_loader --question-file shapes/questions.jsonl --image-folder shapes ...
    python -m llava.eval.scoring.shapes score --split-file shapes/test.json --answers answers.jsonl \\
        [--output results.json] [--per-sample per_sample.json]

`questions` turns a split written by `python -m llava.data.shapes` (one LLaVA record per image and
question) into LLaVA's question JSONL (`question_id` = the record id, `image`, `text` = the question),
asked exactly as `llava.eval.shapes_demo` asks it. `score` gives the accuracy overall, per difficulty
and per question type (`llava.data.shapes.score`; the headline `score` in percent) and per question
(right or wrong). A question without an answer counts as wrong and is logged.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.data import shapes
from llava.eval.scoring.common import (
    ScoringError,
    add_output_arguments,
    print_metrics,
    read_answers_by_id,
    read_json,
    run_cli,
    write_jsonl,
    write_outputs,
)

logger = logging.getLogger(__name__)


def question_text(record: dict[str, Any]) -> str:
    """The question of an M3-Shapes record without its image marker: what the user types."""
    return record["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()


def gold_answer(record: dict[str, Any]) -> str:
    return record["conversations"][1]["value"]


def read_split(path: str | Path) -> list[dict[str, Any]]:
    """The records of a split file, checked to be M3-Shapes records."""
    records = read_json(path)
    if not isinstance(records, list):
        raise ScoringError(f"{path}: expected the list of records `python -m llava.data.shapes` writes")
    for index, record in enumerate(records):
        missing = [k for k in ("id", "image", "conversations", "difficulty", "question_type") if k not in record]
        if missing:
            raise ScoringError(
                f"{path}: record {index} has no {', '.join(map(repr, missing))}; is it an M3-Shapes split?"
            )
    return records


def question_lines(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """LLaVA question JSONL rows, one per record: `question_id`, `image` (relative to the split folder), `text`."""
    return [{"question_id": r["id"], "image": r["image"], "text": question_text(r)} for r in records]


def evaluate(split_file: str | Path, answers_file: str | Path) -> tuple[dict[str, Any], dict[str, bool]]:
    """(results with the headline `score` in percent, {question id: right})."""
    records = read_split(split_file)
    by_id = read_answers_by_id(answers_file, {r["id"] for r in records}, f"the split {split_file}")
    predictions = {qid: answer.text for qid, answer in by_id.items()}
    result = shapes.score(records, predictions)
    if result["missing"]:
        logger.warning(
            "%s: %d of %d questions have no answer and count as wrong", answers_file, result["missing"], len(records)
        )
    per_sample = {
        r["id"]: r["id"] in predictions and shapes.answer_matches(predictions[r["id"]], gold_answer(r)) for r in records
    }
    return {"score": 100.0 * result["accuracy"], **result}, per_sample


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    questions = commands.add_parser("questions", help="write LLaVA's question JSONL for a split")
    questions.add_argument("--split-file", required=True, help="<split>.json written by python -m llava.data.shapes")
    questions.add_argument("--output", required=True)
    score = commands.add_parser("score", help="accuracy of an answers file")
    score.add_argument("--split-file", required=True)
    score.add_argument("--answers", required=True)
    add_output_arguments(score, per_sample="{question_id: right}")
    args = parser.parse_args(argv)

    if args.command == "questions":
        lines = question_lines(read_split(args.split_file))
        write_jsonl(args.output, lines)
        print(f"wrote {len(lines)} questions to {args.output}")
        return None
    results, per_sample = evaluate(args.split_file, args.answers)
    print_metrics(f"M3-Shapes {args.answers}", {"accuracy": results["score"]})
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
