"""What IG-VLM's video benchmarks share: the question sheets (one CSV per benchmark) and the reply as IG-VLM reads it.

A sheet (IG-VLM's `data/multiple_choice_qa/*.csv`, `data/open_ended_qa/*.csv`,
`data/text_generation_benchmark/*.csv`) has one row per question and, in IG-VLM's files, an unnamed
index column first, which is ignored. Columns:

- `video_name`: the video's file name without extension (the `%s` of `--path_video /data/%s.mp4`);
- `question_id`: unique per sheet (the consistency pair Consistency_QA1/2 shares ids across its two sheets);
- `question`;
- `answer`: the correct answer's text (multiple choice: the text of the right option);
- `a0`, `a1`, ...: the options of a multiple-choice sheet (five; STAR has four);
- `question_type` (optional): NExT-QA's CH/CW/TN/..., STAR's Interaction_T1/..., used for per-type accuracy;
- `ts` (optional): `"start-end"` seconds of the video the question is about (TVQA).

Every value is read as text, so an option "2" equals an answer "2". The answer generator
(`llava.eval.model_video_qa`) and the scorers (`video_choice`, `video_open_ended`) read the same sheet.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from llava.eval.scoring.common import ScoringError

REQUIRED_COLUMNS = ("video_name", "question_id", "question")
MAX_OPTIONS = 26


@dataclass(frozen=True)
class VideoQuestion:
    """One row of a sheet."""

    source: str
    """Where it was read, for errors: "NExT_QA.csv:12" (the line the row ends on)."""
    question_id: str
    video_name: str
    question: str
    answer: str | None
    options: tuple[str, ...] = ()
    question_type: str | None = None
    ts: str | None = None


def read_questions(path: str | Path, multiple_choice: bool = False, with_answers: bool = False) -> list[VideoQuestion]:
    """The rows of a sheet; `multiple_choice` requires the option columns a0, a1, ... (at least two),
    `with_answers` (the scorers) a non-empty `answer` in every row."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            required = REQUIRED_COLUMNS + (("answer",) if with_answers else ())
            _check_columns(path, columns, required, multiple_choice)
            option_columns = _option_columns(columns)
            questions = [_question(path, reader.line_num, row, required, option_columns) for row in reader]
    except FileNotFoundError:
        raise ScoringError(f"{path}: question file not found") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ScoringError(f"{path}: not a readable CSV file ({e})") from None
    _check_unique(path, questions)
    return questions


def _check_columns(path: Path, columns: list[str], required: tuple[str, ...], multiple_choice: bool) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise ScoringError(f"{path}: no {', '.join(map(repr, missing))} column (columns: {columns})")
    if multiple_choice and len(_option_columns(columns)) < 2:
        raise ScoringError(f"{path}: a multiple-choice sheet needs the option columns a0, a1, ... (columns: {columns})")


def _option_columns(columns: list[str]) -> list[str]:
    """a0, a1, ... as long as they run without a gap."""
    options = []
    for i in range(MAX_OPTIONS):
        if f"a{i}" not in columns:
            break
        options.append(f"a{i}")
    return options


def _question(
    path: Path, line: int, row: dict[str, str | None], required: tuple[str, ...], option_columns: list[str]
) -> VideoQuestion:
    source = f"{path}:{line}"
    if None in row:  # csv puts the cells beyond the header under the key None
        raise ScoringError(f"{source}: the row has more cells than the header has columns")
    for column in required:
        if not (row.get(column) or "").strip():
            raise ScoringError(f"{source}: empty {column!r}")
    return VideoQuestion(
        source=source,
        question_id=row["question_id"].strip(),
        video_name=row["video_name"].strip(),
        question=row["question"],
        answer=row.get("answer"),
        options=tuple(row.get(c) or "" for c in option_columns),
        question_type=row.get("question_type") or None,
        ts=(row.get("ts") or "").strip() or None,
    )


def _check_unique(path: Path, questions: list[VideoQuestion]) -> None:
    seen: dict[str, str] = {}
    for question in questions:
        if question.question_id in seen:
            raise ScoringError(
                f"{question.source}: question_id {question.question_id!r} already used at {seen[question.question_id]}"
            )
        seen[question.question_id] = question.source


def reply_text(text: str) -> str:
    """The model's reply as IG-VLM keeps it: what follows the last "ASSISTANT:" (all of it when there is none)."""
    return text.split("ASSISTANT:")[-1]
