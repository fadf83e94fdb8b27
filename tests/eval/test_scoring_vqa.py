"""VQA normalisation and 10-annotator accuracy, and the TextVQA / VQAv2 / VizWiz scorers built on them."""

from __future__ import annotations

import json
import logging

import pytest

from llava.eval.scoring import textvqa, vizwiz, vqav2
from llava.eval.scoring.common import ScoringError
from llava.eval.scoring.vqa import normalize_answer, process_punctuation, vqa_accuracy


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs.", "2 dogs"),  # number word -> digit, final period dropped
        ("2 dogs", "2 dogs"),
        ("a yes", "yes"),  # articles dropped
        ("The  Red   Car", "red car"),  # lowercase, whitespace collapsed
        ("dont", "don't"),  # contractions table
        ("none", "0"),  # the official number map sends "none" to 0
        ("1,000", "1000"),  # commas go; digits stay joined
        ("1.5", "1.5"),  # a period followed by a digit is a decimal point
        ("yes!", "yes"),
        ("black and-white", "black and white"),  # a mark touching no space becomes a space
        ("man's hat", "man 's hat"),  # the possessive is split off (LLaVA's / EvalAI's tokeniser)
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_punctuation_rules_of_the_official_eval() -> None:
    # A mark next to a space is deleted, one between letters becomes a space.
    assert process_punctuation("yes - no") == "yes  no"
    assert process_punctuation("well-known") == "well known"
    # A comma between digits anywhere in the text makes every mark vanish instead.
    assert process_punctuation("1,000-2") == "10002"
    # Periods go unless a digit follows; "3." loses its period (the official regex's quirk).
    assert process_punctuation("3.5 m.") == "3.5 m"
    assert process_punctuation("3.") == "3"


@pytest.mark.parametrize(
    ("humans_saying_it", "accuracy"),
    [
        # Leave each of the 10 humans out in turn; score min(matches among the other 9 / 3, 1).
        (0, 0.0),
        (1, (1 * 0 + 9 * (1 / 3)) / 10),  # = 0.3
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # = 0.6
        (3, (3 * (2 / 3) + 7 * 1) / 10),  # = 0.9
        (4, 1.0),  # 3 of the other 9 always agree
        (10, 1.0),
    ],
)
def test_ten_annotator_accuracy(humans_saying_it: int, accuracy: float) -> None:
    humans = ["cat"] * humans_saying_it + ["dog"] * (10 - humans_saying_it)
    assert vqa_accuracy("cat", humans) == pytest.approx(accuracy)


def test_partial_agreement_values_are_exact() -> None:
    assert vqa_accuracy("cat", ["cat"] * 2 + ["dog"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)


def test_accuracy_normalises_both_sides() -> None:
    # "Two." and "2" are the same answer; 2 of 10 humans gave it.
    assert vqa_accuracy("Two.", ["2", "2"] + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("a yes", ["Yes"] * 10) == 1.0


def test_textvqa_end_to_end(write_json, write_answers, tmp_path) -> None:
    annotations = write_json(
        "TextVQA_0.5.1_val.json",
        {
            "data": [
                {"question_id": 1, "image_id": "a", "question": "what brand?", "answers": ["nike"] * 2 + ["puma"] * 8},
                {"question_id": 2, "image_id": "b", "question": "what year?", "answers": ["1999"] * 10},
            ]
        },
    )
    answers = write_answers({1: "Nike.", 2: "1999"})
    results = textvqa.main(
        ["--annotation-file", str(annotations), "--answers", str(answers), "--output", str(tmp_path / "r.json")]
        + ["--per-sample", str(tmp_path / "s.json")]
    )
    assert results["score"] == pytest.approx(100 * (0.6 + 1.0) / 2)  # 80.0
    assert json.loads((tmp_path / "r.json").read_text())["score"] == pytest.approx(80.0)
    assert json.loads((tmp_path / "s.json").read_text()) == {"1": pytest.approx(0.6), "2": 1.0}


def test_textvqa_unknown_question_names_file_line_and_id(write_json, write_answers) -> None:
    annotations = write_json("ann.json", {"data": [{"question_id": 1, "image_id": "a", "answers": ["x"] * 10}]})
    answers = write_answers({1: "x", 77: "y"})
    with pytest.raises(ScoringError, match=r"answers.jsonl:2: question_id '77' is not in the annotations"):
        textvqa.evaluate(annotations, answers)


def test_answers_file_errors_name_file_and_line(write_json, tmp_path) -> None:
    annotations = write_json("ann.json", {"data": [{"question_id": 1, "answers": ["x"] * 10}]})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question_id": 1, "text": "x"}\n{"question_id": 2, "text": \n')
    with pytest.raises(ScoringError, match=r"broken.jsonl:2: invalid JSON"):
        textvqa.evaluate(annotations, broken)
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"question_id": 1, "answer": "x"}\n')
    with pytest.raises(ScoringError, match=r"no_text.jsonl:1: answer has no 'text' field"):
        textvqa.evaluate(annotations, no_text)
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"question_id": 1, "text": "x"}\n{"question_id": 1, "text": "y"}\n')
    with pytest.raises(ScoringError, match=r"twice.jsonl:2: question_id '1' already answered on line 1"):
        textvqa.evaluate(annotations, twice)


def test_vqav2_score_per_answer_type(write_json, write_answers) -> None:
    def entry(qid: int, answer_type: str, answers: list[str]) -> dict:
        return {"question_id": qid, "answer_type": answer_type, "answers": [{"answer": a} for a in answers]}

    annotations = write_json(
        "v2_val_annotations.json",
        {
            "annotations": [
                entry(1, "yes/no", ["yes"] * 10),
                entry(2, "number", ["2"] * 3 + ["3"] * 7),
                entry(3, "number", ["4"] * 10),
            ]
        },
    )
    answers = write_answers({1: "Yes", 2: "two", 3: "five"})
    results = vqav2.main(["score", "--annotation-file", str(annotations), "--answers", str(answers)])
    assert results["accuracy_per_answer_type"] == {"number": pytest.approx(45.0), "yes/no": 100.0}
    assert results["score"] == pytest.approx(100 * (1.0 + 0.9 + 0.0) / 3)


def test_vqav2_submission_fills_missing_questions(write_jsonl, write_answers, tmp_path, caplog) -> None:
    questions = write_jsonl("llava_vqav2_mscoco_test2015.jsonl", [{"question_id": q} for q in (10, 20, 30)])
    answers = write_answers({10: "Two dogs.", 30: "Dont know"})
    out = tmp_path / "upload" / "submission.json"
    with caplog.at_level(logging.WARNING):
        vqav2.main(["submit", "--question-file", str(questions), "--answers", str(answers), "--output", str(out)])
    assert json.loads(out.read_text()) == [
        {"question_id": 10, "answer": "2 dogs"},
        {"question_id": 20, "answer": ""},
        {"question_id": 30, "answer": "don't know"},
    ]
    assert "1 of 3 test questions have no answer" in caplog.text


def test_vqav2_submission_rejects_answers_to_unknown_questions(write_jsonl, write_answers) -> None:
    questions = write_jsonl("test.jsonl", [{"question_id": 10}])
    answers = write_answers({10: "yes", 11: "no"})
    with pytest.raises(ScoringError, match=r"answers.jsonl:2: question_id '11' is not in the question file"):
        vqav2.submission(questions, answers)


def test_vizwiz_submission_and_score(write_jsonl, write_json, write_answers, tmp_path) -> None:
    questions = write_jsonl(
        "llava_vizwiz.jsonl",
        [{"question_id": 0, "image": "VizWiz_val_0.jpg"}, {"question_id": 1, "image": "VizWiz_val_1.jpg"}],
    )
    annotations = write_json(
        "val.json",
        [
            {"image": "VizWiz_val_0.jpg", "answer_type": "unanswerable", "answers": [{"answer": "unanswerable"}] * 10},
            {
                "image": "VizWiz_val_1.jpg",
                "answer_type": "other",
                "answers": [{"answer": "soup"}] * 2 + [{"answer": "can"}] * 8,
            },
        ],
    )
    answers = write_answers({0: "Unanswerable", 1: "Soup."})
    results = vizwiz.main(
        ["score", "--annotation-file", str(annotations), "--question-file", str(questions), "--answers", str(answers)]
    )
    assert results["accuracy_per_answer_type"] == {"other": pytest.approx(60.0), "unanswerable": 100.0}
    out = tmp_path / "vizwiz_submission.json"
    vizwiz.main(["submit", "--question-file", str(questions), "--answers", str(answers), "--output", str(out)])
    assert json.loads(out.read_text()) == [
        {"image": "VizWiz_val_0.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_val_1.jpg", "answer": "soup"},
    ]
