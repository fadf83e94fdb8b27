"""M3-Shapes through the harness: the question file written from a split, and the scorer's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llava.data import shapes
from llava.eval.scoring import shapes as shapes_scoring
from llava.eval.scoring.common import ScoringError


def test_questions_then_score(tmp_path: Path) -> None:
    records = shapes.generate_split(tmp_path, "test", 2, shapes.DEFAULT_SEEDS["test"])
    questions = tmp_path / "questions.jsonl"
    shapes_scoring.main(["questions", "--split-file", str(tmp_path / "test.json"), "--output", str(questions)])
    lines = [json.loads(line) for line in questions.read_text().splitlines()]
    assert [line["question_id"] for line in lines] == [r["id"] for r in records]
    assert lines[0] == {
        "question_id": records[0]["id"],
        "image": records[0]["image"],
        "text": shapes_scoring.question_text(records[0]),
    }
    assert "<image>" not in lines[0]["text"]
    # Right answers for all but the first question (spelled differently), which gets a wrong one; the last is unanswered.
    answers = [{"question_id": r["id"], "text": r["conversations"][1]["value"].upper() + "."} for r in records[1:-1]]
    answers.append({"question_id": records[0]["id"], "text": "purple elephant"})
    answers_file = tmp_path / "answers.jsonl"
    answers_file.write_text("".join(json.dumps(a) + "\n" for a in answers))
    out = tmp_path / "results"
    results = shapes_scoring.main(
        ["score", "--split-file", str(tmp_path / "test.json"), "--answers", str(answers_file)]
        + ["--output", str(out / "results.json"), "--per-sample", str(out / "per_sample.json")]
    )
    assert results["score"] == pytest.approx(100 * (len(records) - 2) / len(records))
    assert results["missing"] == 1
    per_sample = json.loads((out / "per_sample.json").read_text())
    assert per_sample[records[0]["id"]] is False and per_sample[records[-1]["id"]] is False
    assert sum(per_sample.values()) == len(records) - 2


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    (tmp_path / "test.json").write_text(json.dumps([{"id": "x"}]))
    with pytest.raises(ScoringError, match=r"test.json: record 0 has no 'image', 'conversations'"):
        shapes_scoring.read_split(tmp_path / "test.json")
    shapes.generate_split(tmp_path / "s", "test", 1, shapes.DEFAULT_SEEDS["test"])
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"question_id": "nope", "text": "red"}) + "\n")
    with pytest.raises(ScoringError, match=r"a.jsonl:1: question_id 'nope' is not in the split"):
        shapes_scoring.evaluate(tmp_path / "s" / "test.json", answers)
