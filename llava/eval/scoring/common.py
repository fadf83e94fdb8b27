"""Helpers every scorer shares: reading answers and question files, the output flags, means, writing
results and submission files, and running a scoring command.

Answers files are LLaVA's JSONL: one object per line with at least `question_id` and `text`
(the generator also writes `prompt`, `answer_id`, `model_id` and `metadata`). Question ids are
compared as strings, because benchmarks mix ints (TextVQA, MMBench) and strings (GQA, ScienceQA)
and JSON round trips through other tools turn one into the other.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class ScoringError(ValueError):
    """Bad input to an evaluation command (a scorer's, or answer generation's: `HarnessError`); the message
    names the file, the line or record, and the offending value."""


@dataclass(frozen=True)
class Answer:
    """One line of an answers file."""

    question_id: str
    text: str
    line: int
    record: dict[str, Any] = field(repr=False)


def read_json(path: str | Path) -> Any:
    """Load a JSON file, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ScoringError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ScoringError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def read_jsonl(path: str | Path, error: type[ScoringError] = ScoringError) -> list[tuple[int, dict[str, Any]]]:
    """Load a JSONL file as (1-based line number, object) pairs; blank lines are skipped.

    A missing file, a line that is not JSON or not an object raises `error` (the caller's kind of
    `ScoringError`) naming the file and line.
    """
    path = Path(path)
    try:
        # Lines end at "\n" only: answers are written unescaped, and a generated text may hold U+2028.
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{number}: invalid JSON ({e.msg}): {line[:80]!r}") from None
        if not isinstance(obj, dict):
            raise error(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    return rows


def read_answers(path: str | Path) -> list[Answer]:
    """Read a LLaVA answers file; every line needs `question_id` and a string `text`."""
    answers = []
    for number, obj in read_jsonl(path):
        for key in ("question_id", "text"):
            if key not in obj:
                raise ScoringError(f"{path}:{number}: answer has no {key!r} field (keys: {sorted(obj)})")
        if not isinstance(obj["text"], str):
            raise ScoringError(f"{path}:{number}: 'text' must be a string, got {obj['text']!r}")
        answers.append(Answer(str(obj["question_id"]), obj["text"], number, obj))
    return answers


def index_answers(
    answers: Iterable[Answer], path: str | Path, known: Collection[str] | None = None, known_as: str = ""
) -> dict[str, Answer]:
    """Key answers by question id, checking each line in file order.

    A question answered twice is an error naming both lines; with `known`, so is an answer to a
    question outside it (`known_as` names where the known questions come from, for the message).
    """
    by_id: dict[str, Answer] = {}
    for answer in answers:
        if answer.question_id in by_id:
            first = by_id[answer.question_id].line
            raise ScoringError(
                f"{path}:{answer.line}: question_id {answer.question_id!r} already answered on line {first}"
            )
        if known is not None and answer.question_id not in known:
            raise ScoringError(f"{path}:{answer.line}: question_id {answer.question_id!r} is not in {known_as}")
        by_id[answer.question_id] = answer
    return by_id


def read_answers_by_id(path: str | Path, known: Collection[str] | None = None, known_as: str = "") -> dict[str, Answer]:
    """`read_answers` keyed by question id, with the checks of `index_answers`."""
    return index_answers(read_answers(path), path, known, known_as)


def read_question_jsonl(path: str | Path, fields: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """A LLaVA question JSONL keyed by question id (a string), in file order.

    Every line needs `question_id` and each of `fields`; a question id given twice is an error: the
    scorers that read a question file use it to route or name answers, which a repeat makes ambiguous.
    """
    needed = " and ".join(repr(key) for key in ("question_id", *fields))
    questions: dict[str, dict[str, Any]] = {}
    for number, row in read_jsonl(path):
        if any(key not in row for key in ("question_id", *fields)):
            raise ScoringError(f"{path}:{number}: question needs {needed} (keys: {sorted(row)})")
        qid = str(row["question_id"])
        if qid in questions:
            raise ScoringError(f"{path}:{number}: duplicate question_id {qid!r}")
        questions[qid] = row
    return questions


def percent(numerator: float, denominator: int) -> float:
    """100 * numerator / denominator, 0.0 for an empty set (reported, never a crash)."""
    return 100.0 * numerator / denominator if denominator else 0.0


def mean(values: Collection[float]) -> float:
    """The mean as a fraction, 0.0 for an empty set.

    Scorers that report `100.0 * mean(...)` divide before multiplying, unlike `percent`. The two
    orders can differ in the last digit, so each scorer keeps one of them: its scores then compare
    exactly with results files written by earlier versions.
    """
    return sum(values) / len(values) if values else 0.0


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write JSON (UTF-8, non-ASCII kept: MMBench-CN answers are Chinese), creating parent folders.

    `indent=None` writes one compact line, as the test servers' submission files are.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write one JSON object per line (UTF-8, non-ASCII kept), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_submission(
    path: str | Path, entries: Collection[Any], what: str = "answers", indent: int | None = None
) -> None:
    """Write the file a benchmark's own evaluator or test server takes, and say how many entries it holds."""
    write_json(path, entries, indent=indent)
    print(f"wrote {len(entries)} {what} to {path}")


def add_output_arguments(parser: argparse.ArgumentParser, per_sample: str | None) -> None:
    """The scoring commands' output flags: `--output` for results.json and, when the scorer knows
    per question whether the answer was right, `--per-sample`; `per_sample` describes that file's
    mapping, e.g. "{question_id: correct}"."""
    parser.add_argument("--output", help="write results.json here")
    if per_sample is not None:
        parser.add_argument("--per-sample", help=f"write {per_sample} here (for the oracle sweep)")


def write_outputs(
    results: dict[str, Any],
    per_sample: Mapping[str, float | bool] | None,
    output: str | Path | None,
    per_sample_output: str | Path | None,
) -> None:
    """Write a scorer's `results.json` (must hold the headline `score`) and its per-sample file.

    The per-sample file maps question id to correctness (bool, or the soft VQA score); it is what
    `llava.eval.sweep` reads for the oracle analysis.
    """
    if output is not None:
        write_json(output, results)
        logger.info("wrote %s", output)
    if per_sample_output is not None:
        if per_sample is None:
            raise ScoringError("this scorer has no per-sample correctness to write")
        write_json(per_sample_output, dict(per_sample))


def print_metrics(title: str, metrics: Mapping[str, Any]) -> None:
    """Print `name: value` lines under a title; floats with two decimals."""
    print(title)
    for name, value in metrics.items():
        shown = f"{value:.2f}" if isinstance(value, float) else value
        print(f"  {name}: {shown}")


def run_cli(main: Callable[[], object]) -> None:
    """Run an evaluation command's `main` (a scorer, answer generation): progress is logged, and bad input
    ends with its one-line message, not a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except ScoringError as e:
        sys.exit(f"error: {e}")
