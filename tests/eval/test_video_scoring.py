"""Video benchmark scorers: IG-VLM's multiple-choice extraction and accuracy; exact match and the judged scores."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from video_helpers import choice_row, write_answers, write_sheet

from llava.eval.scoring import video_choice, video_open_ended
from llava.eval.scoring.common import ScoringError
from llava.eval.scoring.judge import Judge
from llava.eval.scoring.video_choice import choice_index
from llava.eval.scoring.video_open_ended import contains_answer, exact_match, parse_verdict


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B", 1),
        ("C. strum the string", 2),
        ("E", 4),
        ("(D) hit with sticks", 3),  # "D)" in the reply
        ("The answer is D: hit with sticks", 3),
        ("I think the answer is B) tap", 1),
        ("B. Because A: it rolls", 0),  # IG-VLM: a letter with ':' anywhere overrides the leading one
        ("A: x, and C: y", 0),  # the first of A..E found wins
        ("Answer: strum", 0),  # "r:" is not a letter, but the leading "A" of "Answer" is
        ("strum the string", None),
        ("", None),
        ("ASSISTANT: C", None),  # the reply after "ASSISTANT:" starts with a space
        ("ASSISTANT:C.", 2),
    ],
)
def test_choice_index_follows_igvlm(reply: str, expected: int | None) -> None:
    assert choice_index(reply, 5) == expected


def test_a_letter_beyond_the_options_is_no_answer() -> None:
    assert choice_index("E", 4) is None
    assert choice_index("The answer is E: none", 4) is None


def test_multiple_choice_accuracy_per_type_and_group(tmp_path: Path) -> None:
    rows = [
        choice_row("q1", "v", 0, question_type="CW"),
        choice_row("q2", "v", 2, question_type="CH"),
        choice_row("q3", "v", 3, question_type="TN"),
        choice_row("q4", "v", 1, question_type="DC"),
    ]
    sheet = write_sheet(tmp_path / "NExT_QA.csv", rows)
    answers = write_answers(tmp_path / "a.jsonl", {"q1": "A", "q2": "B", "q3": "The answer is D: hit"})
    out = tmp_path / "out"
    results = video_choice.main(
        ["--question-file", str(sheet), "--answers", str(answers)]
        + ["--output", str(out / "results.json"), "--per-sample", str(out / "per_sample.json")]
    )
    assert results["score"] == 50.0  # q1 and q3 right, q2 wrong, q4 unanswered
    assert results["num_missing"] == 1 and results["num_unparsed"] == 0
    assert results["accuracy_per_type"] == {"CH": 0.0, "CW": 100.0, "DC": 0.0, "TN": 100.0}
    assert results["accuracy_per_type_group"] == {"C": 50.0, "D": 0.0, "T": 100.0}
    assert json.loads((out / "per_sample.json").read_text()) == {"q1": True, "q2": False, "q3": True, "q4": False}


def test_an_option_with_the_answers_text_counts_as_right(tmp_path: Path) -> None:
    # EgoSchema repeats option texts: IG-VLM compares texts, so either copy is right.
    row = {**choice_row("q1", "v", 0), "a3": "roll the handle"}
    sheet = write_sheet(tmp_path / "EgoSchema.csv", [row])
    assert (
        video_choice.main(
            ["--question-file", str(sheet), "--answers", str(write_answers(tmp_path / "a", {"q1": "D"}))]
        )["score"]
        == 100.0
    )


def test_multiple_choice_errors(tmp_path: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", [choice_row("q1", "v", 0)])
    with pytest.raises(ScoringError, match="question_id 'q9' is not in"):
        video_choice.main(["--question-file", str(sheet), "--answers", str(write_answers(tmp_path / "a", {"q9": "A"}))])
    no_answers = write_sheet(tmp_path / "n.csv", [{k: v for k, v in choice_row("q1", "v", 0).items() if k != "answer"}])
    with pytest.raises(ScoringError, match="no 'answer' column"):
        video_choice.main(["--question-file", str(no_answers), "--answers", str(write_answers(tmp_path / "b", {}))])


# -- open-ended -----------------------------------------------------------------------------------


def test_exact_match_and_contains() -> None:
    assert exact_match("Two dogs.", "2 dogs")
    assert exact_match(" a Man", "man")
    assert not exact_match("a man is cooking", "man")
    assert contains_answer("a man is cooking in the kitchen.", "man")
    assert contains_answer("He plays the Guitar!", "guitar")
    assert not contains_answer("the manager talks", "man")  # whole words only
    assert not contains_answer("anything", "")


@pytest.mark.parametrize(
    ("reply", "pred", "score"),
    [
        ("{'pred': 'yes', 'score': 4}", "yes", 4.0),
        ("{'pred': 'no', 'score': 0}.", "no", 0.0),
        ("{'score': 4.8}", None, 4.8),
        ("{''score': 3}", None, 3.0),  # IG-VLM's own example reply is malformed like this
        ('Sure! {"pred": "Yes", "score": "5"}', "yes", 5.0),
        ("{'pred': 'maybe', 'score': 7}", None, None),
        ("I cannot tell.", None, None),
        ("{'pred': 'yes', 'score': __import__('os')}", "yes", None),  # never evaluated
    ],
)
def test_parse_verdict(reply: str, pred: str | None, score: float | None) -> None:
    verdict = parse_verdict(reply)
    assert (verdict.pred, verdict.score) == (pred, score)


@pytest.fixture
def open_sheet(tmp_path: Path) -> Path:
    rows = [
        {"video_name": "v1", "question_id": "1", "question": "who pours liquid", "answer": "man"},
        {"video_name": "v1", "question_id": "2", "question": "what is sliced", "answer": "onion"},
        {"video_name": "v2", "question_id": "3", "question": "what plays", "answer": "music"},
    ]
    return write_sheet(tmp_path / "MSVD_QA.csv", rows)


def scripted_judge(replies: dict[str, str], asked: list[str]) -> Any:
    """A judge factory whose judge answers by the predicted answer found in the prompt, recording each prompt."""

    def factory(model: str, instruction: str) -> Judge:
        def judge(prompt: str) -> str:
            asked.append(prompt)
            return next(reply for key, reply in replies.items() if f"Predicted answer: {key}\n" in prompt)

        return judge

    return factory


def run_open_ended(argv: Sequence[str], factory: Any) -> dict[str, Any]:
    """`video_open_ended.evaluate` with a scripted judge; `argv` alternates argument names and values."""
    defaults = {"criterion": "match", "question_file_2": None, "answers_2": None, "judge_model": None, "reviews": None}
    return video_open_ended.evaluate(argparse.Namespace(**{**defaults, **dict(zip(argv[::2], argv[1::2]))}), factory)


def test_open_ended_without_a_judge(tmp_path: Path, open_sheet: Path) -> None:
    answers = write_answers(tmp_path / "a.jsonl", {"1": "a man", "2": "a woman slices an onion."})
    out = tmp_path / "out"
    results = video_open_ended.main(
        ["--question-file", str(open_sheet), "--answers", str(answers)]
        + ["--output", str(out / "results.json"), "--per-sample", str(out / "per_sample.json")]
    )
    assert results["metric"] == "exact_match"
    assert results["score"] == pytest.approx(100 / 3)  # "a man" = "man"; "3" unanswered
    assert results["contains"] == pytest.approx(200 / 3)
    assert results["num_missing"] == 1
    assert json.loads((out / "per_sample.json").read_text()) == {"1": True, "2": False, "3": False}


def test_open_ended_with_a_judge_and_its_review_cache(tmp_path: Path, open_sheet: Path) -> None:
    answers = write_answers(tmp_path / "a.jsonl", {"1": "a man", "2": "a knife", "3": "a song"})
    replies = {
        "a man": "{'pred': 'yes', 'score': 5}",
        "a knife": "{'pred': 'no', 'score': 1}",
        "a song": "no idea",
    }
    asked: list[str] = []
    reviews = tmp_path / "reviews.jsonl"
    argv = ["question_file", str(open_sheet), "answers", str(answers), "judge_model", "gpt-x", "reviews", str(reviews)]
    results = run_open_ended(argv, scripted_judge(replies, asked))
    assert len(asked) == 3
    assert asked[0].startswith("Question: who pours liquid\nCorrect answer: man\nPredicted answer: a man\n\n")
    assert results["metric"] == "gpt_accuracy"
    assert results["accuracy"] == pytest.approx(100 / 3)  # unreadable counts as "no"
    assert results["mean_score"] == 3.0  # (5 + 1) / 2, the unreadable reply left out
    assert results["num_unreadable"] == 1
    assert results["per_sample"] == {"1": True, "2": False, "3": False}
    # The replies were cached: scoring again asks the judge nothing.
    assert [json.loads(line)["question_id"] for line in reviews.read_text().splitlines()] == ["1", "2", "3"]
    again: list[str] = []
    assert run_open_ended(argv, scripted_judge(replies, again))["accuracy"] == results["accuracy"]
    assert again == []
    # A changed answer makes a new prompt: only it is judged again, and its new reply counts.
    write_answers(answers, {"1": "a man", "2": "an onion", "3": "a song"})
    replies["an onion"] = "{'pred': 'yes', 'score': 5}"
    assert run_open_ended(argv, scripted_judge(replies, again))["accuracy"] == pytest.approx(200 / 3)
    assert len(again) == 1 and "Predicted answer: an onion\n" in again[0]
    other = ["question_file", str(open_sheet), "answers", str(answers), "judge_model", "gpt-y", "reviews", str(reviews)]
    with pytest.raises(ScoringError, match="judged by 'gpt-x', but this run asks 'gpt-y'"):
        run_open_ended(other, scripted_judge(replies, again))


def test_text_generation_criteria_score_0_to_5(tmp_path: Path, open_sheet: Path) -> None:
    answers = write_answers(tmp_path / "a.jsonl", {"1": "a man", "2": "a knife", "3": "a song"})
    replies = {"a man": "{'score': 4}", "a knife": "{'score': 2}", "a song": "{'score': 3}"}
    asked: list[str] = []
    argv = ["question_file", str(open_sheet), "answers", str(answers), "judge_model", "g", "criterion", "temporal"]
    results = run_open_ended(argv, scripted_judge(replies, asked))
    assert results["metric"] == "gpt_score" and results["score"] == 3.0
    assert results["per_sample"] == {"1": 0.8, "2": 0.4, "3": 0.6}
    assert "'score'" in asked[0] and "'pred'" not in asked[0]


def test_consistency_pairs_two_sheets(tmp_path: Path) -> None:
    first = write_sheet(
        tmp_path / "Consistency_QA1.csv",
        [{"video_name": "v", "question_id": "c0", "question": "What is shown?", "answer": "a red square"}],
    )
    second = write_sheet(
        tmp_path / "Consistency_QA2.csv",
        [{"video_name": "v", "question_id": "c0", "question": "Describe it.", "answer": "a red square"}],
    )
    a1 = write_answers(tmp_path / "a1.jsonl", {"c0": "A red square."})
    a2 = write_answers(tmp_path / "a2.jsonl", {"c0": "a red square"})
    results = video_open_ended.main(
        ["--criterion", "consistency", "--question-file", str(first), "--answers", str(a1)]
        + ["--question-file-2", str(second), "--answers-2", str(a2)]
    )
    assert results["exact_match"] == 100.0 and results["agreement"] == 100.0
    asked: list[str] = []

    def factory(model: str, instruction: str) -> Judge:
        assert "consistency" in instruction
        return lambda prompt: asked.append(prompt) or "{'score': 5}"

    argv = ["question_file", str(first), "answers", str(a1), "question_file_2", str(second), "answers_2", str(a2)]
    judged = run_open_ended(argv + ["criterion", "consistency", "judge_model", "g"], factory)
    assert judged["score"] == 5.0
    assert asked == [
        "Question 1: What is shown?\nQuestion 2: Describe it.\nCorrect answer: a red square\n"
        "Predicted answer to question 1: A red square.\nPredicted answer to question 2: a red square\n\n"
        + video_open_ended.CRITERIA["consistency"].reply_format
    ]
    unpaired = write_sheet(
        tmp_path / "other.csv", [{"video_name": "v", "question_id": "c1", "question": "q", "answer": "x"}]
    )
    with pytest.raises(ScoringError, match="do not pair up: 2 question ids are in one only"):
        video_open_ended.main(
            ["--criterion", "consistency", "--question-file", str(first), "--answers", str(a1)]
            + ["--question-file-2", str(unpaired), "--answers-2", str(write_answers(tmp_path / "e", {}))]
        )


def test_open_ended_flags(tmp_path: Path, open_sheet: Path) -> None:
    answers = write_answers(tmp_path / "a.jsonl", {})
    with pytest.raises(SystemExit):
        video_open_ended.main(
            ["--question-file", str(open_sheet), "--answers", str(answers), "--criterion", "consistency"]
        )
    with pytest.raises(SystemExit):
        video_open_ended.main(["--question-file", str(open_sheet), "--answers", str(answers), "--reviews", "r.jsonl"])
