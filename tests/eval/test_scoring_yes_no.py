"""Yes/no scorers: POPE's confusion-matrix metrics and MME's acc / acc+ scores."""

from __future__ import annotations

import pytest

from llava.eval.scoring import mme, pope
from llava.eval.scoring.common import ScoringError


@pytest.mark.parametrize(
    ("text", "reading"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("No, there is not.", "no"),
        ("There is not a cat in the image.", "no"),
        ("Yes, there is a dog. There is no cat.", "yes"),  # only the first sentence counts
        ("Nope", "yes"),  # LLaVA's rule looks for the words no/No/not only
    ],
)
def test_pope_reads_yes_no_like_llava(text: str, reading: str) -> None:
    assert pope.parse_yes_no(text) == reading


def test_pope_metrics_on_a_tiny_confusion_matrix() -> None:
    labels = ["yes", "yes", "yes", "no", "no"]
    predictions = ["yes", "yes", "no", "yes", "no"]  # TP TP FN FP TN
    m = pope.pope_metrics(predictions, labels)
    assert (m.tp, m.fn, m.fp, m.tn) == (2, 1, 1, 1)
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.precision == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert m.recall == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.yes_ratio == pytest.approx(3 / 5)


def test_pope_all_no_predictions_do_not_divide_by_zero() -> None:
    m = pope.pope_metrics(["no", "no"], ["yes", "no"])
    assert (m.precision, m.recall, m.f1, m.accuracy) == (0.0, 0.0, 0.0, 0.5)


def test_pope_cli_by_question_id(write_jsonl, write_answers) -> None:
    adversarial = write_jsonl(
        "coco_pope_adversarial.json", [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"}]
    )
    random = write_jsonl(
        "coco_pope_random.json", [{"question_id": 3, "label": "no"}, {"question_id": 4, "label": "no"}]
    )
    answers = write_answers({1: "Yes, there is.", 2: "Yes.", 3: "No.", 4: "There is not."})
    results = pope.main(
        ["--answers", str(answers), "--labels", f"adversarial={adversarial}", "--labels", f"random={random}"]
    )
    assert results["splits"]["adversarial"]["accuracy"] == 50.0
    assert results["splits"]["adversarial"]["f1"] == pytest.approx(100 * 2 / 3)  # P = 1/2, R = 1
    assert results["splits"]["random"]["accuracy"] == 100.0
    assert results["splits"]["random"]["f1"] == 0.0  # no positives at all
    assert results["score"] == pytest.approx((100 * 2 / 3 + 0.0) / 2)


def test_pope_llava_layout_matches_by_order_within_category(write_jsonl, write_answers) -> None:
    # LLaVA's question file numbers questions 1..N over all splits; each label file starts again at 1.
    questions = write_jsonl(
        "llava_pope_test.jsonl",
        [{"question_id": 1, "category": "random"}, {"question_id": 2, "category": "popular"}]
        + [{"question_id": 3, "category": "random"}],
    )
    random = write_jsonl(
        "coco_pope_random.json", [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"}]
    )
    popular = write_jsonl("coco_pope_popular.json", [{"question_id": 1, "label": "yes"}])
    answers = write_answers({1: "Yes", 2: "No", 3: "No"})
    results, per_sample = pope.evaluate(
        answers, {"random": random, "popular": popular}, question_file=questions, match="order"
    )
    assert results["splits"]["random"]["accuracy"] == 100.0  # answers 1, 3 vs labels yes, no
    assert results["splits"]["popular"]["accuracy"] == 0.0
    assert per_sample == {"random/1": True, "random/2": True, "popular/1": False}
    # Scoring one split of a combined answers file leaves the other split's answers alone.
    only_random, _ = pope.evaluate(answers, {"random": random}, question_file=questions, match="order")
    assert list(only_random["splits"]) == ["random"]


def test_pope_label_without_answer_names_the_label_line(write_jsonl, write_answers) -> None:
    labels = write_jsonl(
        "coco_pope_random.json", [{"question_id": 1, "label": "yes"}, {"question_id": 9, "label": "no"}]
    )
    with pytest.raises(ScoringError, match=r"coco_pope_random.json:2: question_id '9' has no answer"):
        pope.evaluate(write_answers({1: "Yes"}), {"random": labels})


@pytest.mark.parametrize(
    ("text", "reading"),
    [("Yes", "yes"), ("No.", "no"), ("Yes, it is.", "yes"), ("not really", "no"), ("There is a dog.", "other")],
)
def test_mme_reads_predictions_like_calculation_py(text: str, reading: str) -> None:
    assert mme.parse_prediction(text) == reading


def _record(subtask: str, image: str, gt: str, prediction: str) -> mme.MMERecord:
    return mme.MMERecord(subtask, image, f"Is it {gt}? Please answer yes or no.", gt, prediction)


def test_mme_acc_and_acc_plus() -> None:
    records = [
        _record("existence", "1.jpg", "Yes", "Yes"),
        _record("existence", "1.jpg", "No", "No"),  # image 1: both right
        _record("existence", "2.jpg", "Yes", "Yes"),
        _record("existence", "2.jpg", "No", "Yes"),  # image 2: one wrong
    ]
    score = mme.score_subtask(records)
    assert score.acc == 0.75  # 3 of 4 questions
    assert score.acc_plus == 0.5  # 1 of 2 images
    assert score.score == pytest.approx(125.0)  # 100 * 0.75 + 100 * 0.5


def test_mme_image_needs_two_questions() -> None:
    with pytest.raises(ScoringError, match=r"image '1.jpg' has 1 answered questions, expected 2"):
        mme.score_subtask([_record("count", "1.jpg", "Yes", "Yes")])


@pytest.fixture
def mme_root(tmp_path):
    """Two MME layouts: questions next to the images (existence), and images/ + questions_answers_YN/."""
    root = tmp_path / "MME_Benchmark_release_version"
    (root / "existence").mkdir(parents=True)
    (root / "existence" / "000.txt").write_text(
        "Is there a dog? Please answer yes or no.\tYes\nIs there a cat?  Please answer yes or no.\tNo\n"
    )
    qa = root / "artwork" / "questions_answers_YN"
    qa.mkdir(parents=True)
    (root / "artwork" / "images").mkdir()
    (qa / "10002.txt").write_text(
        "Is this by Monet? Please answer yes or no.\tYes\nIs this by Dali? Please answer yes or no.\tNo\n"
    )
    reasoning = root / "commonsense_reasoning"
    reasoning.mkdir()
    (reasoning / "0001.txt").write_text(
        "Is it cold? Please answer yes or no.\tNo\nIs it warm? Please answer yes or no.\tYes\n"
    )
    return root


def test_mme_end_to_end_with_eval_tool_round_trip(mme_root, write_answers, tmp_path) -> None:
    suffix = "\nAnswer the question using a single word or phrase."
    rows = [
        ("existence/000.png", "Yes", {"prompt": "Is there a dog? Please answer yes or no." + suffix}),
        (
            "existence/000.png",
            "No",
            {"prompt": "Is there a cat? Please answer yes or no." + suffix},
        ),  # two spaces in GT
        ("artwork/images/10002.jpg", "Yes", {"prompt": "Is this by Monet? Please answer yes or no."}),
        ("artwork/images/10002.jpg", "Yes", {"prompt": "Is this by Dali? Please answer yes or no."}),  # wrong
        ("commonsense_reasoning/0001.png", "No", {"prompt": "Is it cold? Please answer yes or no."}),
        ("commonsense_reasoning/0001.png", "I think so", {"prompt": "Is it warm? Please answer yes or no."}),
    ]
    answers = write_answers(rows=rows)
    eval_tool = tmp_path / "eval_tool" / "answers" / "m3"
    results = mme.main(["--answers", str(answers), "--gt-dir", str(mme_root), "--write-eval-tool-dir", str(eval_tool)])
    assert results["subtasks"]["existence"]["score"] == 200.0
    assert results["subtasks"]["artwork"]["score"] == pytest.approx(50.0)  # acc 0.5, acc+ 0
    assert results["perception"] == pytest.approx(250.0)
    assert results["cognition"] == pytest.approx(50.0)  # "I think so" is neither yes nor no
    assert "OCR" in results["missing_subtasks"]
    lines = (eval_tool / "artwork.txt").read_text().splitlines()
    assert lines[0].split("\t") == ["10002.jpg", "Is this by Monet? Please answer yes or no.", "Yes", "Yes"]
    again = mme.main(["--eval-tool-dir", str(eval_tool)])
    assert again["subtasks"] == results["subtasks"]


def test_mme_question_not_in_ground_truth_is_named(mme_root, write_answers) -> None:
    answers = write_answers(rows=[("existence/000.png", "Yes", {"prompt": "Is there a horse?"})])
    expected = r"answers.jsonl:1: question 'Is there a horse\?' about 'existence/000.png' is not in .*\(000.txt\)"
    with pytest.raises(ScoringError, match=expected):
        mme.records_from_answers(answers, mme_root)


def test_mme_malformed_lines_are_named_in_both_layouts(mme_root, tmp_path) -> None:
    # A blank line is skipped; a line with the wrong number of tab-separated fields is named.
    (mme_root / "existence" / "000.txt").write_text("\nIs there a dog?\tYes\nIs there a cat? No\n")
    with pytest.raises(ScoringError, match=r"000.txt:3: expected question<TAB>answer, got 1 fields"):
        mme.load_ground_truth(mme_root)
    eval_tool = tmp_path / "eval_tool"
    eval_tool.mkdir()
    (eval_tool / "count.txt").write_text("1.jpg\tTwo cats?\tYes\tyes\n1.jpg\tThree cats?\tNo\n")
    with pytest.raises(ScoringError, match=r"count.txt:2: expected image<TAB>question<TAB>ground truth<TAB>prediction"):
        mme.read_eval_tool_dir(eval_tool)
