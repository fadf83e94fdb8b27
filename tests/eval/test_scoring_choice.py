"""Multiple-choice scorers: option-letter parsing, ScienceQA categories, SEED-Bench types, GQA types."""

from __future__ import annotations

import json

import pytest

from llava.eval.scoring import gqa, scienceqa, seed
from llava.eval.scoring.choice import parse_option_letter, read_choices
from llava.eval.scoring.common import ScoringError, read_answers_by_id


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"),
        ("A.", "A"),
        (" B) a cat", "B"),
        ("(C)", "C"),
        ("D: seven", "D"),
        ("The answer is A.", "A"),
        ("Answer: B", "B"),
        ("答案是C", "C"),  # MMBench-CN style
        ("A dog is sitting.", None),  # "A" is an article here, not option A
        ("the answer is a cat", None),  # lowercase "a" after "answer is" is an article
        ("E", None),  # beyond the four options
        ("I am not sure", None),
    ],
)
def test_parse_option_letter(text: str, letter: str | None) -> None:
    assert parse_option_letter(text, "ABCD") == letter


def test_parse_option_letter_by_option_text() -> None:
    assert parse_option_letter("Cat.", "ABC", ["dog", "cat", "bird"]) == "B"
    assert parse_option_letter("cat", "AB", ["cat", "Cat"]) is None  # ambiguous


def test_read_choices_of_the_asked_questions(write_answers, caplog) -> None:
    answers = read_answers_by_id(write_answers({"q3": "no idea", "q1": "C", "q2": "(B)", "other": "A"}))
    asked = ["q1", "q2", "q3", "q4"]
    read = read_choices(answers, asked, "test questions", lambda qid, text: parse_option_letter(text, "AB"))
    assert read.chosen == {"q3": None, "q1": None, "q2": "B"}  # C is not one of the two options
    assert list(read.unreadable.items()) == [("q3", "no idea"), ("q1", "C")]  # in answers-file order
    assert read.missing == 1  # q4; the answer to "other" is not asked for here
    assert "1 of 4 test questions have no answer; counted wrong" in caplog.text


def test_read_choices_passes_the_question_to_the_reader(write_answers) -> None:
    answers = read_answers_by_id(write_answers({"two": "B", "three": "C"}))
    options = {"two": "AB", "three": "ABC"}
    read = read_choices(answers, ["two", "three"], "questions", lambda qid, text: options[qid].index(text))
    assert read.chosen == {"two": 1, "three": 2}


def _problem(subject: str, grade: int, answer: int, hint: str = "", image: str | None = None) -> dict:
    return {
        "question": "?",
        "choices": ["w", "x", "y"],
        "answer": answer,
        "subject": subject,
        "grade": f"grade{grade}",
        "hint": hint,
        "image": image,
    }


@pytest.fixture
def sqa_files(write_json):
    problems = {
        "1": _problem("natural science", 3, 0, image="image.png"),  # NAT IMG G1-6
        "2": _problem("social science", 8, 1, hint="A map of..."),  # SOC TXT G7-12
        "3": _problem("language science", 10, 2),  # LAN NO G7-12
        "4": _problem("natural science", 5, 1, hint="Read.", image="image.png"),  # NAT TXT IMG G1-6
        "5": _problem("natural science", 1, 0),  # in the val split only
    }
    return write_json("problems.json", problems), write_json(
        "pid_splits.json", {"test": ["1", "2", "3", "4"], "val": ["5"]}
    )


def test_scienceqa_per_category(sqa_files, write_answers, caplog) -> None:
    problems, splits = sqa_files
    # 1 right, 2 right, 3 unreadable (wrong), 4 unanswered (wrong)
    answers = write_answers({"1": "A", "2": "The answer is B.", "3": "I think it is the third one"})
    results = scienceqa.main(["--problems", str(problems), "--split-file", str(splits), "--answers", str(answers)])
    assert results["score"] == 50.0
    assert results["accuracy_per_category"] == {
        "NAT": 50.0,  # 1 right, 4 wrong
        "SOC": 100.0,  # 2
        "LAN": 0.0,  # 3
        "TXT": 50.0,  # 2 right, 4 wrong
        "IMG": 50.0,  # 1 right, 4 wrong
        "NO": 0.0,  # 3
        "G1-6": 50.0,  # 1 right, 4 wrong
        "G7-12": 50.0,  # 2 right, 3 wrong
    }
    assert results["unparsed"] == {"3": "I think it is the third one"}
    assert results["num_missing"] == 1
    assert "1 of 4 problems of split 'test' have no answer" in caplog.text


def test_scienceqa_letter_beyond_the_choices_is_wrong(sqa_files, write_answers) -> None:
    problems, splits = sqa_files
    answers = write_answers({"1": "D", "2": "B", "3": "C", "4": "B"})  # problem 1 has 3 choices: D is no answer
    results, per_sample = scienceqa.evaluate(problems, splits, answers)
    assert per_sample == {"1": False, "2": True, "3": True, "4": True}
    assert results["unparsed"] == {"1": "D"}


def test_scienceqa_answer_outside_the_split_is_an_error(sqa_files, write_answers) -> None:
    problems, splits = sqa_files
    answers = write_answers({"1": "A", "5": "A"})
    with pytest.raises(ScoringError, match=r"answers.jsonl:2: question_id '5' is not in split 'test'"):
        scienceqa.evaluate(problems, splits, answers)


def test_seed_accuracy_per_type(write_json, write_answers) -> None:
    def q(qid: str, type_id: int, answer: str, data_type: str = "image") -> dict:
        return {"question_id": qid, "question_type_id": type_id, "answer": answer, "data_type": data_type}

    questions = write_json(
        "SEED-Bench.json",
        {
            "question_type": {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10},
            "questions": [
                q("s1", 1, "A"),
                q("s2", 1, "B"),
                q("s3", 1, "C"),
                q("i1", 2, "D"),
                q("v1", 10, "A", "video"),
            ],
        },
    )
    answers = write_answers({"s1": "A", "s2": "B.", "s3": "D", "i1": "The answer is D", "v1": "B"})
    results = seed.main(["--questions", str(questions), "--answers", str(answers)])
    assert results["accuracy_per_type"] == {"Scene Understanding": pytest.approx(200 / 3), "Instance Identity": 100.0}
    assert results["score"] == 75.0  # 3 of the 4 image questions; the video one is not counted
    video = seed.main(["--questions", str(questions), "--answers", str(answers), "--data-type", "video"])
    assert video["score"] == 0.0


def test_gqa_balanced_accuracy_per_type_and_conversion(write_json, write_answers, tmp_path) -> None:
    def q(answer: str, structural: str, semantic: str, balanced: bool = True) -> dict:
        return {"answer": answer, "isBalanced": balanced, "types": {"structural": structural, "semantic": semantic}}

    questions = write_json(
        "testdev_balanced_questions.json",
        {
            "q1": q("yes", "verify", "attr"),
            "q2": q("no", "logical", "obj"),
            "q3": q("table", "query", "rel"),
            "q4": q("left", "choose", "rel"),
            "q5": q("dog", "query", "cat", balanced=False),  # not in the balanced score
        },
    )
    answers = write_answers({"q1": "Yes.", "q2": "yes", "q3": "Table", "q4": "left", "q5": "cat"})
    results = gqa.main(["score", "--questions", str(questions), "--answers", str(answers)])
    assert results["score"] == 75.0  # q1, q3, q4 right; q2 wrong
    assert results["accuracy_binary_open"] == {"binary": pytest.approx(200 / 3), "open": 100.0}
    assert results["accuracy_per_structural_type"] == {"choose": 100.0, "logical": 0.0, "query": 100.0, "verify": 100.0}
    assert results["accuracy_per_semantic_type"] == {"attr": 100.0, "obj": 0.0, "rel": 100.0}

    out = tmp_path / "testdev_balanced_predictions.json"
    gqa.main(["convert", "--answers", str(answers), "--output", str(out)])
    assert json.loads(out.read_text())[:2] == [
        {"questionId": "q1", "prediction": "yes"},
        {"questionId": "q2", "prediction": "yes"},
    ]


def test_gqa_missing_prediction_is_an_error(write_json, write_answers) -> None:
    questions = write_json("q.json", {"q1": {"answer": "yes", "isBalanced": True, "types": {}}})
    with pytest.raises(ScoringError, match=r"balanced question 'q1' .* has no prediction"):
        gqa.evaluate(questions, write_answers({}))
