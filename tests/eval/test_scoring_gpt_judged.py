"""LLaVA-Bench and MM-Vet: judge inputs, a fake judge instead of GPT, and the summaries."""

from __future__ import annotations

import json

import pytest

from llava.eval.scoring import llava_bench, mmvet
from llava.eval.scoring.common import ScoringError, read_answers


@pytest.fixture
def bench_files(write_jsonl, write_json, write_answers):
    questions = write_jsonl(
        "questions.jsonl",
        [
            {"question_id": 0, "image": "001.jpg", "text": "What is it?", "category": "conv"},
            {"question_id": 1, "image": "001.jpg", "text": "Describe it.", "category": "detail"},
        ],
    )
    context = write_jsonl("context.jsonl", [{"image": "001.jpg", "caption": ["A red bus.", "A bus on a street."]}])
    rule = write_json(
        "rule.json",
        {f"llava_bench_{c}": {"role": "Assistant", "prompt": f"Rate the {c} answers."} for c in ("conv", "detail")},
    )
    reference = write_answers({0: "A bus.", 1: "A red bus on a street."}, name="answers_gpt4.jsonl")
    answers = write_answers({0: "A red bus.", 1: "A car."})
    return questions, context, reference, answers, rule


def test_llava_bench_prompts_without_a_judge(bench_files) -> None:
    records = llava_bench.review(*bench_files)
    assert [r["category"] for r in records] == ["llava_bench_conv", "llava_bench_detail"]
    assert "tuple" not in records[0]
    assert records[0]["prompt"] == (
        "[Context]\nA red bus.\nA bus on a street.\n\n[Question]\nWhat is it?\n\n"
        "[Assistant 1]\nA bus.\n\n[End of Assistant 1]\n\n[Assistant 2]\nA red bus.\n\n[End of Assistant 2]\n\n"
        "[System]\nRate the conv answers.\n\n"
    )


def test_llava_bench_with_a_fake_judge(bench_files) -> None:
    replies = iter(["8 9\nAssistant 2 is more precise.", "I cannot rate this."])
    records = llava_bench.review(*bench_files, judge=lambda prompt: next(replies))
    assert records[0]["tuple"] == [8.0, 9.0]
    assert records[1]["tuple"] == [-1, -1]  # unreadable reply


def test_llava_bench_summary_relative_scores(write_jsonl, tmp_path) -> None:
    reviews = write_jsonl(
        "reviews.jsonl",
        [
            {"question_id": 0, "category": "llava_bench_conv", "tuple": [8, 6]},
            {"question_id": 1, "category": "llava_bench_conv", "tuple": [10, 9]},
            {"question_id": 2, "category": "llava_bench_detail", "tuple": [5, 5]},
            {"question_id": 3, "category": "llava_bench_detail", "tuple": [-1, -1]},  # left out
        ],
    )
    results = llava_bench.main(["summarize", "--reviews", str(reviews), "--output", str(tmp_path / "r.json")])
    summary = results["per_category"]
    assert summary["llava_bench_conv"]["relative"] == pytest.approx(100 * 7.5 / 9)  # means 9 and 7.5
    assert summary["llava_bench_detail"]["relative"] == 100.0
    assert summary["all"]["relative"] == pytest.approx(100 * 20 / 23)  # (6+9+5) / (8+10+5)
    assert summary["all"]["count"] == 3
    assert json.loads((tmp_path / "r.json").read_text())["score"] == pytest.approx(100 * 20 / 23)


def test_llava_bench_missing_answer_is_named(bench_files, write_answers) -> None:
    questions, context, reference, _, rule = bench_files
    partial = write_answers({0: "A bus."}, name="partial.jsonl")
    with pytest.raises(ScoringError, match=r"questions.jsonl:2: question_id '1' has no answer in .*partial.jsonl"):
        llava_bench.review(questions, context, reference, partial, rule)


def test_mmvet_submission_and_fake_judge(write_answers, tmp_path) -> None:
    answers = write_answers({0: "4", 1: "The sign says stop."})
    out = tmp_path / "mmvet.json"
    mmvet.main(["submit", "--answers", str(answers), "--output", str(out)])
    assert json.loads(out.read_text()) == {"v1_0": "4", "v1_1": "The sign says stop."}

    meta = {
        "v1_0": {"question": "2+2?", "answer": "4", "capability": ["math"]},
        "v1_1": {"question": "What does it say?", "answer": "stop", "capability": ["ocr", "rec"]},
    }
    grades = {"2+2?": "1.0", "What does it say?": "0.5"}

    def judge(prompt: str) -> str:
        return next(reply for question, reply in grades.items() if f"Question: {question}\n" in prompt)

    scores = mmvet.grade(read_answers(answers), meta, judge, answers, "mm-vet.json")
    assert scores == {"v1_0": 1.0, "v1_1": 0.5}
    summary = mmvet.summarize(scores, meta)
    assert summary["total"] == 75.0
    assert summary["per_capability"] == {"math": 100.0, "ocr": 50.0, "rec": 50.0}


def test_mmvet_grade_parsing() -> None:
    assert mmvet.parse_grade("0.7") == 0.7
    assert mmvet.parse_grade("Score: 1.0 because...") == 1.0
    assert mmvet.parse_grade("7") is None  # out of range
    assert mmvet.parse_grade("n/a") is None
