"""Helpers every scorer shares: reading answers files, parsing option letters, writing results.

Answers files are LLaVA's JSONL: one object per line with at least `question_id` and `text`
(the generator also writes `prompt`, `answer_id`, `model_id` and `metadata`). Question ids are
compared as strings, because benchmarks mix ints (TextVQA, MMBench) and strings (GQA, ScienceQA)
and JSON round trips through other tools turn one into the other.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping
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


def index_answers(answers: Iterable[Answer], path: str | Path) -> dict[str, Answer]:
    """Key answers by question id; a question answered twice is an error naming both lines."""
    by_id: dict[str, Answer] = {}
    for answer in answers:
        if answer.question_id in by_id:
            first = by_id[answer.question_id].line
            raise ScoringError(
                f"{path}:{answer.line}: question_id {answer.question_id!r} already answered on line {first}"
            )
        by_id[answer.question_id] = answer
    return by_id


def check_known_ids(
    answers: Iterable[Answer], known: Mapping[str, Any] | set[str], path: str | Path, what: str
) -> None:
    """Fail on the first answer whose question id is not in the reference (`what` names it)."""
    for answer in answers:
        if answer.question_id not in known:
            raise ScoringError(f"{path}:{answer.line}: question_id {answer.question_id!r} is not in {what}")


_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:\)|\.|:|,|\s*$)")
# Only "answer is" is case-insensitive: a lowercase "a" after it is an article ("the answer is a cat").
_ANSWER_IS = re.compile(r"(?:(?i:answer is|answer)\s*:?|答案(?:是|为)?\s*[:：]?)\s*\(?([A-Z])\b")


def parse_option_letter(text: str, letters: str = "ABCD", options: list[str] | None = None) -> str | None:
    """Return the option letter a free-form answer picks, or None when it cannot be read.

    Accepted, in order: a bare letter ("B"), a leading letter followed by punctuation ("B.",
    "(B)", "B: cat", "B) cat"), "The answer is B." / "Answer: B", and, when `options` (the
    option texts, in letter order) are given, an answer that is exactly one option's text.
    A letter outside `letters` (say "E" for a four-option question) is not an answer. A leading
    "A " is not read as a letter: "A dog" is an article, not option A.
    """
    cleaned = text.strip()
    match = _LEADING_LETTER.match(cleaned)
    letter = match.group(1) if match else None
    if letter is None:
        match = _ANSWER_IS.search(cleaned)
        if match:
            letter = match.group(1)
    if letter is None and options is not None:
        wanted = _plain(cleaned)
        hits = [letters[i] for i, option in enumerate(options[: len(letters)]) if _plain(option) == wanted]
        letter = hits[0] if len(hits) == 1 else None
    return letter if letter is not None and letter in letters else None


def _plain(text: str) -> str:
    return " ".join(text.lower().rstrip(".").split())


def percent(numerator: float, denominator: int) -> float:
    """100 * numerator / denominator, 0.0 for an empty set (reported, never a crash)."""
    return 100.0 * numerator / denominator if denominator else 0.0


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write JSON (UTF-8, non-ASCII kept: MMBench-CN answers are Chinese), creating parent folders.

    `indent=None` writes one compact line, as the test servers' submission files are.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


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
