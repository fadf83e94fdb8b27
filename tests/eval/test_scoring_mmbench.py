"""MMBench CircularEval: every rotation must be right; the submission spreadsheet."""

from __future__ import annotations

import openpyxl
import pandas as pd
import pytest

from llava.eval.scoring import mmbench
from llava.eval.scoring.common import ScoringError

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]


def write_tsv(path, rows: list[dict]) -> None:
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, sep="\t", index=False)


@pytest.fixture
def tsv(tmp_path):
    path = tmp_path / "mmbench_dev.tsv"
    write_tsv(
        path,
        [
            # four options, answer B
            {"index": 0, "question": "Which animal?", "A": "cat", "B": "dog", "C": "cow", "D": "pig", "answer": "B"}
            | {"category": "object", "l2-category": "perception", "split": "dev", "image": "aGVsbG8="},
            # three options (D empty), answer A
            {"index": 1, "question": "什么颜色?", "hint": "看图", "A": "红", "B": "绿", "C": "蓝", "answer": "A"}
            | {"category": "color", "l2-category": "perception", "split": "dev", "image": "aGVsbG8="},
        ],
    )
    return path


def test_rotation_maps_displayed_letters_back() -> None:
    # Round 1 shows the options rotated by one: displayed A is original B, displayed D is original A.
    assert mmbench.rotated_letter("A", 1, 4) == "B"
    assert mmbench.rotated_letter("D", 1, 4) == "A"
    assert mmbench.rotated_letter("B", 2, 3) == "A"  # three options: (1 + 2) % 3 = 0


def test_one_wrong_rotation_makes_the_question_wrong(tsv, write_answers, tmp_path) -> None:
    rows = [
        # Question 0, answer B = "dog". Round r shows dog at position (1 - r) mod 4.
        (0, "B", {"round_idx": 0}),
        (0, "A", {"round_idx": 1}),
        (0, "D", {"round_idx": 2}),
        (0, "The answer is C.", {"round_idx": 3}),
        # Question 1, answer A = "红". Round r shows it at position (0 - r) mod 3: A, C, B.
        (1, "A", {"round_idx": 0}),
        (1, "A", {"round_idx": 1}),  # wrong: displayed A is original B in round 1
        (1, "B", {"round_idx": 2}),
    ]
    answers = write_answers(rows=rows)
    submission = tmp_path / "upload" / "m3.xlsx"
    results = mmbench.main(["--tsv", str(tsv), "--answers", str(answers), "--submission", str(submission)])
    assert results["score"] == 50.0  # question 0 right in every round, question 1 not
    assert results["single_pass_accuracy"] == 100.0  # round 0 alone gets both
    assert results["accuracy_per_category"] == {"color": 0.0, "object": 100.0}
    assert results["accuracy_per_l2_category"] == {"perception": 50.0}

    sheet = openpyxl.load_workbook(submission).active
    values = [[cell.value for cell in row] for row in sheet.iter_rows()]
    assert values[0] == [c for c in COLUMNS if c != "image"] + ["prediction"]
    assert values[1][0] == 0 and values[1][-1] == "B"  # round-0 answer text
    assert values[2][1] == "什么颜色?" and values[2][-1] == "A"


def test_circular_copies_in_the_tsv_are_grouped(tmp_path, write_answers) -> None:
    # MMBench's own files repeat a question under index + 1,000,000 with the options rotated.
    path = tmp_path / "mmbench_circular.tsv"
    base = {"question": "Which?", "category": "c", "l2-category": "l2", "split": "dev", "image": ""}
    write_tsv(
        path,
        [
            base | {"index": 5, "A": "x", "B": "y", "answer": "A"},
            base | {"index": 1_000_005, "A": "y", "B": "x", "answer": "B"},
            base | {"index": 6, "A": "x", "B": "y", "answer": "B"},
        ],
    )
    answers = write_answers(rows=[(5, "A", {}), (1_000_005, "A", {}), (6, "B", {})])
    results, per_sample = mmbench.evaluate(path, answers)
    assert per_sample == {"5": False, "6": True}  # the copy of question 5 was answered wrongly
    assert results["score"] == 50.0
    assert results["num_questions"] == 2


def test_unanswered_row_is_wrong_and_counted(tsv, write_answers) -> None:
    results, per_sample = mmbench.evaluate(tsv, write_answers({0: "B"}))
    assert per_sample == {"0": True, "1": False}
    assert results["num_rows_without_answer"] == 1


def test_answer_to_unknown_index_or_round_is_an_error(tsv, write_answers) -> None:
    with pytest.raises(ScoringError, match=r"answers.jsonl:1: question_id '42' is not in"):
        mmbench.evaluate(tsv, write_answers({42: "A"}))
    with pytest.raises(ScoringError, match=r"answers.jsonl:1: round_idx 3 is not in 0..2 for index 1"):
        mmbench.evaluate(tsv, write_answers({1: "A"}, extra={1: {"round_idx": 3}}))


def test_test_split_without_answers_writes_only_the_submission(tmp_path, write_answers) -> None:
    path = tmp_path / "mmbench_test.tsv"
    pd.DataFrame([{"index": 0, "question": "q", "A": "a", "B": "b", "image": ""}]).to_csv(path, sep="\t", index=False)
    submission = tmp_path / "test.xlsx"
    results, per_sample = mmbench.evaluate(path, write_answers({0: "A"}), submission)
    assert results["score"] is None and per_sample is None
    assert openpyxl.load_workbook(submission).active["E2"].value == "A"  # columns: index, question, A, B, prediction


def test_control_characters_in_a_prediction_do_not_break_the_submission(tmp_path, write_answers) -> None:
    path = tmp_path / "mmbench_test.tsv"
    pd.DataFrame([{"index": 0, "question": "q", "A": "a", "B": "b", "image": ""}]).to_csv(path, sep="\t", index=False)
    submission = tmp_path / "test.xlsx"
    mmbench.evaluate(path, write_answers({0: "A\x00\x1b"}), submission)
    assert openpyxl.load_workbook(submission).active["E2"].value == "A"
