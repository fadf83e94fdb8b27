"""Multiple-choice video QA (NExT-QA, IntentQA, EgoSchema, STAR, TVQA): IG-VLM's answer extraction and accuracy.

    python -m llava.eval.scoring.video_choice --question-file NExT_QA.csv --answers answers.jsonl \\
        [--output results.json] [--per-sample per_sample.json]

The question file is the IG-VLM sheet the answers were generated from (`llava.eval.scoring.video_common`);
answers are matched by `question_id`. The chosen option is read from the answer as IG-VLM reads it
(`choice_index`), and the answer is right when that option's text equals the sheet's `answer`
(so two options with the same text as the answer both count, as in IG-VLM). An unanswered
question is wrong (`num_missing`, with a warning), as is an answer with no readable option
(`num_unparsed`). Reported: accuracy overall and, when the sheet has `question_type`, per type and
per type group (its first letter: NExT-QA's C(ausal)/T(emporal)/D(escriptive), STAR's
I(nteraction)/S(equence)/P(rediction)/F(easibility)), as IG-VLM prints them.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llava.eval.scoring.choice import read_choices
from llava.eval.scoring.common import (
    add_output_arguments,
    percent,
    print_metrics,
    read_answers_by_id,
    run_cli,
    write_outputs,
)
from llava.eval.scoring.video_common import VideoQuestion, read_questions, reply_text

LETTERS = "ABCDE"
"""The letters IG-VLM reads; its prompts offer at most five options."""


def choice_index(text: str, num_options: int) -> int | None:
    """The option (0 = A) IG-VLM reads from a reply, or None.

    IG-VLM's rule: a reply starting with a letter A-E picks it; then, in the reply from "answer is"
    on when it says so, a letter followed by ":" or ")" overrides it, the first of A..E found. A
    letter beyond the question's options is no answer.
    """
    reply = reply_text(text)
    choice = LETTERS.index(reply[0]) if reply and reply[0] in LETTERS else None
    if "answer is " in reply:
        reply = reply[reply.index("answer is") :]
    for index, letter in enumerate(LETTERS):
        if f"{letter}:" in reply or f"{letter})" in reply:
            choice = index
            break
    return choice if choice is not None and choice < num_options else None


def evaluate(questions_file: str | Path, answers_file: str | Path) -> tuple[dict[str, Any], dict[str, bool]]:
    """Results (accuracy in percent) and per-question correctness."""
    questions = read_questions(questions_file, multiple_choice=True, with_answers=True)
    answers = read_answers_by_id(answers_file, {q.question_id for q in questions}, str(questions_file))
    num_options = {q.question_id: len(q.options) for q in questions}
    read = read_choices(answers, list(num_options), "questions", lambda qid, text: choice_index(text, num_options[qid]))
    per_sample = {q.question_id: is_correct(q, read.chosen.get(q.question_id)) for q in questions}
    accuracy = percent(sum(per_sample.values()), len(questions))
    results = {
        "benchmark": Path(questions_file).stem,
        "metric": "accuracy",
        "score": accuracy,
        "accuracy": accuracy,
        "num_questions": len(questions),
        "num_missing": read.missing,
        "num_unparsed": len(read.unreadable),
        **accuracy_by_type(questions, per_sample),
    }
    return results, per_sample


def is_correct(question: VideoQuestion, choice: int | None) -> bool:
    """Whether the chosen option (None: unanswered or unreadable) has the text of the sheet's answer."""
    return choice is not None and question.options[choice] == question.answer


def accuracy_by_type(questions: Sequence[VideoQuestion], correct: Mapping[str, bool]) -> dict[str, Any]:
    """Accuracy per `question_type` and per its first letter; empty when the sheet has no types."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    by_group: dict[str, list[bool]] = defaultdict(list)
    for question in questions:
        if question.question_type:
            by_type[question.question_type].append(correct[question.question_id])
            by_group[question.question_type[0]].append(correct[question.question_id])
    if not by_type:
        return {}
    return {
        "accuracy_per_type": {t: percent(sum(v), len(v)) for t, v in sorted(by_type.items())},
        "accuracy_per_type_group": {g: percent(sum(v), len(v)) for g, v in sorted(by_group.items())},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--question-file", "--question_file", dest="question_file", required=True, help="IG-VLM sheet")
    parser.add_argument("--answers", required=True)
    add_output_arguments(parser, "{question_id: correct}")
    args = parser.parse_args(argv)

    results, per_sample = evaluate(args.question_file, args.answers)
    print_metrics(f"{results['benchmark']} {args.answers}", {"accuracy": results["score"]})
    for group, value in results.get("accuracy_per_type_group", {}).items():
        print(f"    {group}: {value:.2f}")
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
