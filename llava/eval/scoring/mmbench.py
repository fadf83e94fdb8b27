"""MMBench and MMBench-CN: circular multiple-choice accuracy, and the submission spreadsheet.

    python -m llava.eval.scoring.mmbench --tsv mmbench_dev_20230712.tsv --answers answers.jsonl \\
        [--submission submission.xlsx] [--output results.json] [--per-sample per_sample.json]

The TSV is MMBench's release file (columns `index`, `question`, `hint`, `A`..`D`, `answer`,
`category`, `l2-category`, `split`, `image` as base64, sometimes `source`, `comment`); MMBench-CN
has the same layout in Chinese. The options of a row are A, B, ... up to the first empty one.

Each answer carries `question_id` = the row's `index` and `round_idx` (LLaVA's answer files call
it `round_id`; 0 when absent): in round r the generator showed the options rotated by r, so the
letter it read as A was the original option number r, B number r+1, and so on modulo the number
of options. The letter is parsed from the answer ("B", "B.", "(B)", "The answer is B", or exactly
an option's text) and mapped back to the original letter.

CircularEval: a question counts as correct only if every prediction made for it is right — every
rotation round, and every TSV row of the question (MMBench's own files repeat a question with
rotated options under `index` + k * 1,000,000; rows are grouped by `index` mod 1,000,000). A row
without any answer makes its question wrong (counted in `num_rows_without_answer`). Accuracy is
reported overall and per `category` and `l2-category`, plus the single-pass accuracy of the
round-0 answers for comparison. Test splits have no `answer` column: then only the submission is
written. The submission is the TSV without the `image` column (base64 images overflow Excel's
32,767-character cells) plus `prediction`, the round-0 answer text of each row.
"""

from __future__ import annotations

import argparse
import logging
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.eval.scoring.choice import parse_option_letter
from llava.eval.scoring.common import (
    Answer,
    ScoringError,
    add_output_arguments,
    mean,
    percent,
    print_metrics,
    read_answers,
    run_cli,
    write_outputs,
)
from llava.optional import optional_dependency

with optional_dependency():
    import pandas as pd
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

logger = logging.getLogger(__name__)

CIRCULAR_OFFSET = 1_000_000
"""MMBench stores the k-th rotated copy of question i under index i + k * CIRCULAR_OFFSET."""
_OPTION_COLUMNS = "ABCD"


@dataclass(frozen=True)
class Question:
    """One TSV row: its options in original order and the correct original letter (None on test)."""

    index: int
    options: list[str]
    answer: str | None
    category: str
    l2_category: str

    @property
    def group(self) -> int:
        return self.index % CIRCULAR_OFFSET


def rotated_letter(displayed: str, round_idx: int, num_options: int) -> str:
    """Original letter of the option shown as `displayed` in rotation round `round_idx`.

    >>> rotated_letter("A", 1, 4)  # round 1 shows B's text first
    'B'
    """
    position = string.ascii_uppercase.index(displayed)
    return string.ascii_uppercase[(position + round_idx) % num_options]


def is_correct(question: Question, text: str, round_idx: int) -> bool | None:
    """Whether one answer is right: None when no letter can be read from it (counted wrong)."""
    n = len(question.options)
    shown = question.options[round_idx:] + question.options[:round_idx]
    displayed = parse_option_letter(text, string.ascii_uppercase[:n], shown)
    if displayed is None:
        return None
    return rotated_letter(displayed, round_idx, n) == question.answer


def circular_accuracy(
    questions: Mapping[int, Question], answers_by_row: Mapping[int, Sequence[tuple[int, str]]]
) -> dict[str, Any]:
    """CircularEval over questions grouped by `index` mod 1e6; fractions in [0, 1].

    `answers_by_row` maps a TSV index to its (round_idx, text) answers. A group is right when it
    has an answer for every row and every answer is right.
    """
    group_ok: dict[int, bool] = defaultdict(lambda: True)
    base: dict[int, Question] = {}
    unparsed = 0
    for index, question in questions.items():
        answers = answers_by_row.get(index, [])
        row_ok = bool(answers)
        for round_idx, text in answers:
            verdict = is_correct(question, text, round_idx)
            unparsed += verdict is None
            row_ok = row_ok and bool(verdict)
        group_ok[question.group] = group_ok[question.group] and row_ok
        if question.group not in base or question.index < base[question.group].index:
            base[question.group] = question

    def by(attribute: str) -> dict[str, float]:
        buckets: dict[str, list[bool]] = defaultdict(list)
        for group, ok in group_ok.items():
            buckets[getattr(base[group], attribute)].append(ok)
        return {name: mean(oks) for name, oks in sorted(buckets.items())}

    return {
        "accuracy": mean(group_ok.values()),
        "per_category": by("category"),
        "per_l2_category": by("l2_category"),
        "per_group": dict(group_ok),
        "num_unparsed": unparsed,
    }


def _is_empty(value: str) -> bool:
    # LLaVA's generator treats these as "no option here" too.
    return value.strip() == "" or value.strip().lower() in ("nan", "none")


def read_tsv(path: str | Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ScoringError(f"{path}: file not found") from None
    missing = [c for c in ("index", "question", "A", "B") if c not in table.columns]
    if missing:
        raise ScoringError(f"{path}: missing MMBench columns {missing}; columns: {list(table.columns)}")
    return table


def questions_from_table(table: pd.DataFrame, path: str | Path) -> dict[int, Question]:
    questions: dict[int, Question] = {}
    for row_number, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        try:
            index = int(row["index"])
        except ValueError:
            raise ScoringError(f"{path}:{row_number}: index {row['index']!r} is not an integer") from None
        if index in questions:
            raise ScoringError(f"{path}:{row_number}: duplicate index {index}")
        options = []
        for column in _OPTION_COLUMNS:
            if column not in row or _is_empty(row[column]):
                break
            options.append(row[column])
        answer = row.get("answer", "").strip() or None
        if answer is not None and answer not in _OPTION_COLUMNS[: len(options)]:
            raise ScoringError(f"{path}:{row_number}: answer {answer!r} is not one of the {len(options)} options")
        questions[index] = Question(index, options, answer, row.get("category", ""), row.get("l2-category", ""))
    return questions


def group_answers(
    answers: Sequence[Answer], questions: Mapping[int, Question], answers_path: str | Path, tsv_path: str | Path
) -> dict[int, list[tuple[int, str]]]:
    """(round_idx, text) per TSV index; unknown indices, bad or repeated rounds are errors."""
    by_row: dict[int, list[tuple[int, str]]] = defaultdict(list)
    seen: dict[tuple[int, int], int] = {}
    for answer in answers:
        try:
            index = int(answer.question_id)
        except ValueError:
            index = None
        if index not in questions:
            raise ScoringError(f"{answers_path}:{answer.line}: question_id {answer.question_id!r} is not in {tsv_path}")
        round_idx = answer.record.get("round_idx", answer.record.get("round_id", 0))
        n = len(questions[index].options)
        if not isinstance(round_idx, int) or not 0 <= round_idx < n:
            raise ScoringError(
                f"{answers_path}:{answer.line}: round_idx {round_idx!r} is not in 0..{n - 1} for index {index}"
            )
        if (index, round_idx) in seen:
            raise ScoringError(
                f"{answers_path}:{answer.line}: index {index} round {round_idx} already answered "
                f"on line {seen[index, round_idx]}"
            )
        seen[index, round_idx] = answer.line
        by_row[index].append((round_idx, answer.text))
    return by_row


def write_submission(
    table: pd.DataFrame, answers_by_row: Mapping[int, Sequence[tuple[int, str]]], path: str | Path
) -> None:
    """The upload spreadsheet: TSV columns except `image`, plus the round-0 `prediction` per row."""
    sheet = table.drop(columns=[c for c in ("image",) if c in table.columns]).copy()
    round0 = {index: dict(rounds).get(0, "") for index, rounds in answers_by_row.items()}
    # Excel cannot store control characters; a model's raw output may contain some.
    sheet["prediction"] = [ILLEGAL_CHARACTERS_RE.sub("", round0.get(int(index), "")) for index in sheet["index"]]
    sheet["index"] = sheet["index"].astype(int)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.to_excel(path, index=False, engine="openpyxl")


def evaluate(
    tsv_file: str | Path, answers_file: str | Path, submission: str | Path | None = None
) -> tuple[dict[str, Any], dict[str, bool] | None]:
    table = read_tsv(tsv_file)
    questions = questions_from_table(table, tsv_file)
    answers_by_row = group_answers(read_answers(answers_file), questions, answers_file, tsv_file)
    if submission is not None:
        write_submission(table, answers_by_row, submission)
    without_answer = [index for index in questions if index not in answers_by_row]
    if without_answer:
        logger.warning(
            "%d of %d TSV rows have no answer (first: %d)", len(without_answer), len(questions), without_answer[0]
        )
    results: dict[str, Any] = {
        "benchmark": "mmbench",
        "metric": "circular_accuracy",
        "num_rows": len(questions),
        "num_rows_without_answer": len(without_answer),
    }
    if any(q.answer is None for q in questions.values()):
        logger.warning("%s has rows without an 'answer' (a test split): nothing to score", tsv_file)
        return {**results, "score": None}, None
    circular = circular_accuracy(questions, answers_by_row)
    single = []  # round 0 of the original rows: what a single pass without CircularEval scores
    for index, question in questions.items():
        rounds = dict(answers_by_row.get(index, []))
        if index < CIRCULAR_OFFSET and 0 in rounds:
            single.append(is_correct(question, rounds[0], 0) is True)
    results.update(
        score=100.0 * circular["accuracy"],
        accuracy_per_category={k: 100.0 * v for k, v in circular["per_category"].items()},
        accuracy_per_l2_category={k: 100.0 * v for k, v in circular["per_l2_category"].items()},
        single_pass_accuracy=percent(sum(single), len(single)),
        num_questions=len(circular["per_group"]),
        num_unparsed=circular["num_unparsed"],
    )
    return results, {str(group): ok for group, ok in circular["per_group"].items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tsv", required=True, help="MMBench or MMBench-CN TSV")
    parser.add_argument("--answers", required=True)
    parser.add_argument("--submission", help="write the upload .xlsx here")
    add_output_arguments(parser, "{question: correct}")
    args = parser.parse_args(argv)

    results, per_sample = evaluate(args.tsv, args.answers, args.submission)
    if results["score"] is not None:
        print_metrics(
            f"MMBench {args.answers}",
            {"circular accuracy": results["score"], "single pass": results["single_pass_accuracy"]},
        )
        for name, value in results["accuracy_per_category"].items():
            print(f"    {name}: {value:.2f}")
    if args.submission:
        print(f"wrote {args.submission}")
    write_outputs(results, per_sample, args.output, args.per_sample if per_sample is not None else None)
    return results


if __name__ == "__main__":
    run_cli(main)
