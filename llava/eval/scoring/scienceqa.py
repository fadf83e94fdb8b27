"""ScienceQA: multiple-choice accuracy, overall and by subject, context modality and grade.

    python -m llava.eval.scoring.scienceqa --problems problems.json --split-file pid_splits.json \\
        --split test --answers answers.jsonl [--output results.json] [--per-sample per_sample.json]

`problems.json` is ScienceQA's `{pid: {"question", "choices": [...], "answer": int, "subject",
"grade", "image", "hint", ...}}`; the split file is `pid_splits.json` (`{"test": [pid, ...], ...}`,
pick one with `--split`) or a plain JSON list of pids. Answers carry the pid as `question_id`.

The option letter is read from the answer text ("A", "A.", "(A)", "The answer is A."); an answer
with no readable letter, or a letter beyond the problem's choices, counts as wrong and is listed
in `unparsed`. A problem of the split without an answer also counts as wrong (LLaVA scores it as
"FAILED") and is counted in `num_missing`. Categories follow ScienceQA's own scorer: NAT/SOC/LAN
by subject; TXT when the hint (text context) is non-empty, IMG when the problem has an image, NO
when it has neither (a problem can be both TXT and IMG); G1-6 / G7-12 by grade.
"""

from __future__ import annotations

import argparse
import string
from collections.abc import Mapping
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

_SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
_GRADE_BANDS = {f"grade{g}": "G1-6" if g <= 6 else "G7-12" for g in range(1, 13)}
CATEGORIES = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")


def categories(problem: Mapping[str, Any]) -> list[str]:
    """The report columns a problem counts in, e.g. ["NAT", "IMG", "G1-6"]."""
    found = []
    if problem.get("subject") in _SUBJECTS:
        found.append(_SUBJECTS[problem["subject"]])
    has_text, has_image = bool(problem.get("hint")), bool(problem.get("image"))
    found += ["TXT"] * has_text + ["IMG"] * has_image + ["NO"] * (not has_text and not has_image)
    if problem.get("grade") in _GRADE_BANDS:
        found.append(_GRADE_BANDS[problem["grade"]])
    return found


def score(
    predictions: Mapping[str, str | None], problems: Mapping[str, Mapping[str, Any]], split: list[str]
) -> dict[str, Any]:
    """Accuracies in percent from predicted letters (None: unreadable or missing) per pid of the split."""
    correct: dict[str, bool] = {}
    for pid in split:
        letter = predictions.get(pid)
        correct[pid] = letter is not None and string.ascii_uppercase.index(letter) == problems[pid]["answer"]
    per_category: dict[str, list[bool]] = {name: [] for name in CATEGORIES}
    for pid, ok in correct.items():
        for name in categories(problems[pid]):
            per_category[name].append(ok)
    return {
        "accuracy": percent(sum(correct.values()), len(correct)),
        "per_category": {name: percent(sum(oks), len(oks)) for name, oks in per_category.items()},
        "count_per_category": {name: len(oks) for name, oks in per_category.items()},
        "per_sample": correct,
    }


def load_split(path: str | Path, split: str) -> list[str]:
    data = read_json(path)
    if isinstance(data, dict):
        if split not in data:
            raise ScoringError(f"{path}: no split {split!r}; splits: {sorted(data)}")
        data = data[split]
    if not isinstance(data, list):
        raise ScoringError(f"{path}: expected a list of problem ids (or {{split: [ids]}})")
    return [str(pid) for pid in data]


def evaluate(
    problems_file: str | Path, split_file: str | Path, answers_file: str | Path, split: str = "test"
) -> tuple[dict[str, Any], dict[str, bool]]:
    problems = read_json(problems_file)
    if not isinstance(problems, dict):
        raise ScoringError(f"{problems_file}: expected ScienceQA's problems {{pid: {{...}}}}")
    problems = {str(pid): problem for pid, problem in problems.items()}
    pids = load_split(split_file, split)
    for pid in pids:
        if pid not in problems:
            raise ScoringError(f"{split_file}: problem {pid!r} of split {split!r} is not in {problems_file}")
        if not isinstance(problems[pid].get("answer"), int) or not isinstance(problems[pid].get("choices"), list):
            raise ScoringError(f"{problems_file}: problem {pid!r} needs an int 'answer' and a 'choices' list")
    answers = read_answers_by_id(answers_file, set(pids), f"split {split!r} of {split_file}")
    letters = {pid: string.ascii_uppercase[: len(problems[pid]["choices"])] for pid in pids}
    read = read_choices(
        answers, pids, f"problems of split {split!r}", lambda pid, text: parse_option_letter(text, letters[pid])
    )
    scores = score(read.chosen, problems, pids)
    results = {
        "benchmark": "scienceqa",
        "metric": "accuracy",
        "score": scores["accuracy"],
        "accuracy_per_category": scores["per_category"],
        "count_per_category": scores["count_per_category"],
        "num_problems": len(pids),
        "num_missing": read.missing,
        "unparsed": read.unreadable,
    }
    return results, scores["per_sample"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", required=True, help="ScienceQA problems.json")
    parser.add_argument("--split-file", required=True, help="pid_splits.json or a JSON list of pids")
    parser.add_argument("--split", default="test")
    parser.add_argument("--answers", required=True)
    add_output_arguments(parser, "{pid: correct}")
    args = parser.parse_args(argv)

    results, per_sample = evaluate(args.problems, args.split_file, args.answers, args.split)
    print_metrics(
        f"ScienceQA {args.split} {args.answers}", {"accuracy": results["score"], **results["accuracy_per_category"]}
    )
    if results["unparsed"]:
        print(f"  unreadable answers (counted wrong): {len(results['unparsed'])}")
    write_outputs(results, per_sample, args.output, args.per_sample)
    return results


if __name__ == "__main__":
    run_cli(main)
