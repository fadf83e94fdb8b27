"""MM-Vet: the submission file for the official GPT-4 grader, and an optional local grading.

    python -m llava.eval.scoring.mmvet submit --answers answers.jsonl --output mmvet_submission.json
    python -m llava.eval.scoring.mmvet grade --answers answers.jsonl --meta mm-vet.json \\
        --judge-model gpt-4-0613 [--output results.json] [--per-sample per_sample.json]

`submit` writes `{"v1_<question_id>": answer}` (LLaVA's `convert_mmvet_for_eval.py`; ids that
already start with "v1_" are kept), the file MM-Vet's evaluator and online grader take.
`grade` asks a judge for a 0.0-1.0 correctness score per answer against `mm-vet.json`
(`{"v1_0": {"question", "answer", "capability": [...], "imagename"}}`) and reports the total
(mean score, percent) and the mean per capability, as MM-Vet's evaluator does. The judge prompt
here is a short zero-shot restatement of MM-Vet's grading rule, not the official few-shot prompt:
numbers for a paper come from the official evaluator.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llava.eval.scoring.common import (
    Answer,
    ScoringError,
    add_output_arguments,
    index_answers,
    percent,
    print_metrics,
    read_answers,
    read_json,
    run_cli,
    write_outputs,
    write_submission,
)
from llava.eval.scoring.judge import Judge, openai_judge

logger = logging.getLogger(__name__)

GRADING_PROMPT = (
    "Compare the ground truth and the prediction of an AI model for the question and give a "
    "correctness score between 0.0 and 1.0. In the ground truth, <AND> means every element is "
    "needed for full credit and <OR> means any one element is enough; partial answers get partial "
    "credit. Reply with the score only.\n\n"
    "Question: {question}\nGround truth: {answer}\nPrediction: {prediction}\nScore:"
)
_SCORE = re.compile(r"\d+(?:\.\d+)?")


def submission_key(question_id: str) -> str:
    return question_id if question_id.startswith("v1_") else f"v1_{question_id}"


def submission(answers: list[Answer], path: str | Path) -> dict[str, str]:
    """`{"v1_<id>": text}` in answers-file order; a question answered twice is an error."""
    return {submission_key(qid): answer.text for qid, answer in index_answers(answers, path).items()}


def parse_grade(reply: str) -> float | None:
    """The first number of the judge's reply if it lies in [0, 1], else None."""
    match = _SCORE.search(reply)
    if match is None:
        return None
    value = float(match.group())
    return value if 0.0 <= value <= 1.0 else None


def summarize(scores: Mapping[str, float], meta: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Total and per-capability mean scores in percent (a question counts in each of its capabilities)."""
    per_capability: dict[str, list[float]] = defaultdict(list)
    for key, value in scores.items():
        for capability in meta[key]["capability"]:
            per_capability[capability].append(value)
    return {
        "total": percent(sum(scores.values()), len(scores)),
        "per_capability": {c: percent(sum(v), len(v)) for c, v in sorted(per_capability.items())},
    }


def grade(
    answers: list[Answer], meta: Mapping[str, Mapping[str, Any]], judge: Judge, path: str | Path, meta_path: str | Path
) -> dict[str, float]:
    """Judge score per submission key; an unreadable reply scores 0.0 (with a warning)."""
    scores = {}
    for qid, answer in index_answers(answers, path).items():
        key = submission_key(qid)
        if key not in meta:
            raise ScoringError(f"{path}:{answer.line}: question_id {qid!r} ({key}) is not in {meta_path}")
        prompt = GRADING_PROMPT.format(
            question=meta[key]["question"], answer=meta[key]["answer"], prediction=answer.text
        )
        reply = judge(prompt)
        value = parse_grade(reply)
        if value is None:
            logger.warning("%s: unreadable judge reply %r, scored 0.0", key, reply[:80])
        scores[key] = value if value is not None else 0.0
    return scores


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="write the MM-Vet submission JSON")
    submit.add_argument("--answers", required=True)
    submit.add_argument("--output", required=True)
    grade_cmd = commands.add_parser("grade", help="grade with a GPT judge (network)")
    grade_cmd.add_argument("--answers", required=True)
    grade_cmd.add_argument("--meta", required=True, help="mm-vet.json")
    grade_cmd.add_argument("--judge-model", required=True, help="OpenAI model, e.g. gpt-4-0613")
    add_output_arguments(grade_cmd, "{v1_id: score}")
    args = parser.parse_args(argv)

    answers = read_answers(args.answers)
    if args.command == "submit":
        write_submission(args.output, submission(answers, args.answers), indent=2)
        return None
    meta = read_json(args.meta)
    scores = grade(answers, meta, openai_judge(args.judge_model, temperature=0.0), args.answers, args.meta)
    summary = summarize(scores, meta)
    results = {"benchmark": "mmvet", "metric": "gpt_score", "score": summary["total"], **summary}
    print_metrics("MM-Vet", {"total": summary["total"], **summary["per_capability"]})
    write_outputs(results, scores, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
