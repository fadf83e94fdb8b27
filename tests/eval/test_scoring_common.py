"""The helpers every scorer shares: answers keyed by id, question files, submission and review files, means."""

from __future__ import annotations

import json

import pytest

from llava.eval.scoring import gqa, llava_bench, mmvet, pope, scienceqa, seed, textvqa, vizwiz, vqav2
from llava.eval.scoring.common import ScoringError, mean, percent, read_answers_by_id, read_question_jsonl


def test_answers_by_id_stop_at_the_first_bad_line(write_answers) -> None:
    # Line 2 answers an unknown question and line 3 repeats line 1: the earlier line is the one named.
    unknown_first = write_answers(rows=[(1, "a", {}), (9, "b", {}), (1, "c", {})], name="unknown_first.jsonl")
    with pytest.raises(ScoringError, match=r"unknown_first.jsonl:2: question_id '9' is not in the split"):
        read_answers_by_id(unknown_first, {"1", "2"}, "the split")
    repeat_first = write_answers(rows=[(1, "a", {}), (1, "b", {}), (9, "c", {})], name="repeat_first.jsonl")
    with pytest.raises(ScoringError, match=r"repeat_first.jsonl:2: question_id '1' already answered on line 1"):
        read_answers_by_id(repeat_first, {"1", "2"}, "the split")


def test_answers_by_id_without_known_questions(write_answers) -> None:
    answers = read_answers_by_id(write_answers({7: "x", "b": "y"}))
    assert {qid: answer.text for qid, answer in answers.items()} == {"7": "x", "b": "y"}


def test_question_file_keyed_by_string_id_in_file_order(write_jsonl) -> None:
    path = write_jsonl("q.jsonl", [{"question_id": 2, "image": "b.jpg"}, {"question_id": "1", "image": "a.jpg"}])
    questions = read_question_jsonl(path, ["image"])
    assert list(questions) == ["2", "1"]
    assert questions["2"]["image"] == "b.jpg"


def test_question_file_errors_name_the_line(write_jsonl) -> None:
    no_image = write_jsonl("no_image.jsonl", [{"question_id": 0, "image": "a"}, {"question_id": 1}])
    with pytest.raises(ScoringError, match=r"no_image.jsonl:2: question needs 'question_id' and 'image' \(keys"):
        read_question_jsonl(no_image, ["image"])
    repeated = write_jsonl("repeated.jsonl", [{"question_id": 0}, {"question_id": "0"}])
    with pytest.raises(ScoringError, match=r"repeated.jsonl:2: duplicate question_id '0'"):
        read_question_jsonl(repeated)


def test_every_question_file_reader_refuses_a_repeated_id(write_jsonl, write_answers, tmp_path) -> None:
    rows = [{"question_id": 5, "image": "a.jpg", "category": "random"}] * 2
    questions = write_jsonl("questions.jsonl", rows)
    answers = write_answers({5: "yes"})
    labels = write_jsonl("labels.jsonl", [{"question_id": 5, "label": "yes"}])
    out = str(tmp_path / "out.json")
    duplicate = r"questions.jsonl:2: duplicate question_id '5'"
    with pytest.raises(ScoringError, match=duplicate):
        vizwiz.main(["submit", "--question-file", str(questions), "--answers", str(answers), "--output", out])
    with pytest.raises(ScoringError, match=duplicate):
        vqav2.main(["submit", "--question-file", str(questions), "--answers", str(answers), "--output", out])
    with pytest.raises(ScoringError, match=duplicate):
        pope.evaluate(answers, {"random": labels}, question_file=questions)


@pytest.mark.parametrize(
    ("scorer", "annotations", "message"),
    [
        (vqav2, {"annotations": [{"question_id": 1, "answers": []}]}, r"annotations\[0\] \(question_id 1\) has no"),
        (vizwiz, [{"image": "a.jpg", "answers": []}], r": \[0\] \(image a.jpg\) has no answers"),
        (vizwiz, [{"image": "a.jpg"}], r": \[0\] needs 'image' and 'answers'"),
    ],
)
def test_annotation_entry_without_human_answers_is_named(scorer, annotations, message, write_json) -> None:
    with pytest.raises(ScoringError, match=message):
        scorer.load_annotations(write_json("annotations.json", annotations))


def test_submission_files_and_what_the_command_says(write_jsonl, write_answers, tmp_path, capsys) -> None:
    # The test servers get one compact line; MM-Vet's grader gets the indented JSON it always got.
    questions = write_jsonl("test.jsonl", [{"question_id": 1}, {"question_id": 2}])
    answers = write_answers({1: "Two.", 2: "yes"})
    upload = tmp_path / "vqav2.json"
    vqav2.main(["submit", "--question-file", str(questions), "--answers", str(answers), "--output", str(upload)])
    assert upload.read_text() == '[{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "yes"}]\n'
    assert capsys.readouterr().out == f"wrote 2 answers to {upload}\n"
    mmvet_file = tmp_path / "mmvet.json"
    mmvet.main(["submit", "--answers", str(answers), "--output", str(mmvet_file)])
    assert mmvet_file.read_text() == '{\n  "v1_1": "Two.",\n  "v1_2": "yes"\n}\n'
    predictions = tmp_path / "gqa.json"
    gqa.main(["convert", "--answers", str(answers), "--output", str(predictions)])
    assert capsys.readouterr().out == f"wrote 2 answers to {mmvet_file}\nwrote 2 predictions to {predictions}\n"


def test_llava_bench_review_command_writes_jsonl(write_jsonl, write_json, write_answers, tmp_path, capsys) -> None:
    questions = write_jsonl("q.jsonl", [{"question_id": 0, "image": "1.jpg", "text": "这是什么?", "category": "conv"}])
    context = write_jsonl("context.jsonl", [{"image": "1.jpg", "caption": "一辆公共汽车"}])
    rule = write_json("rule.json", {"llava_bench_conv": {"role": "Assistant", "prompt": "Rate."}})
    reference = write_answers({0: "A bus."}, name="reference.jsonl")
    answers = write_answers({0: "公共汽车"})
    out = tmp_path / "reviews" / "prompts.jsonl"
    args = ["review", "--questions", questions, "--context", context, "--reference", reference, "--answers", answers]
    llava_bench.main([str(a) for a in args] + ["--rule", str(rule), "--output", str(out)])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and "一辆公共汽车" in lines[0]  # non-ASCII kept, not escaped
    assert json.loads(lines[0]) == llava_bench.review(questions, context, reference, answers, rule)[0]
    assert capsys.readouterr().out == f"wrote 1 judge prompts to {out}\n"


def test_mean_and_percent_of_nothing_are_zero() -> None:
    assert mean([]) == 0.0
    assert percent(0, 0) == 0.0
    assert mean([True, False, True, True]) == 0.75


ONE_THIRD_FRACTION_FIRST = 100.0 * (1 / 3)  # 33.33333333333333
ONE_THIRD_PERCENT_FIRST = 100.0 * 1 / 3  # 33.333333333333336


def test_each_scorer_keeps_its_order_of_division(write_json, write_answers, tmp_path) -> None:
    # One right answer of three: the two orders of the float operations differ in the last digit, and
    # results files written by earlier versions must compare equal to new ones digit for digit.
    assert ONE_THIRD_FRACTION_FIRST != ONE_THIRD_PERCENT_FIRST
    answers = write_answers({"1": "A", "2": "x", "3": "x"})

    textvqa_ann = write_json("textvqa.json", {"data": [{"question_id": q, "answers": ["a"] * 10} for q in "123"]})
    assert textvqa.evaluate(textvqa_ann, answers)[0]["score"] == ONE_THIRD_FRACTION_FIRST

    gqa_questions = write_json("gqa.json", {q: {"answer": "a", "isBalanced": True, "types": {}} for q in "123"})
    assert gqa.evaluate(gqa_questions, answers)[0]["score"] == ONE_THIRD_FRACTION_FIRST

    seed_questions = {"question_type": {"t": 1}, "questions": []}
    seed_questions["questions"] = [{"question_id": q, "question_type_id": 1, "answer": "A"} for q in "123"]
    assert seed.evaluate(write_json("seed.json", seed_questions), answers)[0]["score"] == ONE_THIRD_PERCENT_FIRST

    problem = {"choices": ["w", "x"], "answer": 0, "subject": "natural science", "grade": "grade1"}
    problems = write_json("problems.json", {q: problem for q in "123"})
    split = write_json("split.json", ["1", "2", "3"])
    assert scienceqa.evaluate(problems, split, answers)[0]["score"] == ONE_THIRD_PERCENT_FIRST

    meta = {f"v1_{q}": {"capability": ["ocr"]} for q in "123"}
    summary = mmvet.summarize({"v1_1": 1.0, "v1_2": 0.0, "v1_3": 0.0}, meta)
    assert summary["total"] == summary["per_capability"]["ocr"] == ONE_THIRD_PERCENT_FIRST
