"""The harness with `--matryoshka_vis_token_scale auto` beside fixed scales, then scored, calibrated and swept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from generation_helpers import WorkCounter, common_args, count_work, read_jsonl, vqa_questions, write_images

from llava.eval import calibrate_scale, harness, model_vqa_loader, model_vqa_science, sweep
from llava.eval.scoring import textvqa
from llava.scale_policy import ScalePolicy, read_policy_file, write_policy_file


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> WorkCounter:
    return count_work(monkeypatch)


@pytest.fixture
def checkpoint(tmp_path: Path, tiny_llava_pad: Path) -> Path:
    """A copy of the tiny checkpoint, free to hold a policy file of its own."""
    return Path(shutil.copytree(tiny_llava_pad, tmp_path / "llava-v1.5-tiny-m3"))


def test_auto_beside_fixed_scales_from_one_encoding(tmp_path: Path, checkpoint: Path, work: WorkCounter) -> None:
    # Every rung keeps nothing below 576: each question tries 1 and 9, then answers at 576.
    write_policy_file(checkpoint / "matryoshka_policy.json", ScalePolicy((1, 9, 576), (1.0, 1.0, 0.0)))
    images = write_images(tmp_path / "images", 3)
    questions = vqa_questions(tmp_path / "q.jsonl", images)
    argv = common_args(checkpoint, questions, tmp_path / "answers" / "a.jsonl", "auto,1,576", "--batch-size", "3")
    paths = model_vqa_loader.main(argv + ["--image-folder", str(tmp_path / "images")])
    assert work.tower_batches == [3]  # one tower pass for every budget and every rung
    assert paths == {label: tmp_path / "answers" / f"a_s{label}.jsonl" for label in ("auto", 1, 576)}
    auto, at_576 = read_jsonl(paths["auto"]), read_jsonl(paths[576])
    assert [line["text"] for line in auto] == [line["text"] for line in at_576]
    for line, fixed in zip(auto, at_576):
        metadata = line["metadata"]
        assert metadata["matryoshka_vis_token_scale"] == "auto"
        assert (metadata["scale_used"], metadata["rungs"]) == (576, [1, 9, 576])
        assert (metadata["visual_tokens"], metadata["visual_tokens_processed"]) == (576, 586)
        assert metadata["p_first"][-1] == pytest.approx(fixed["metadata"]["p_first"], abs=1e-5)
        assert metadata["seconds"] > 0
    # A stopped run resumes the auto file like any other.
    assert harness.read_answered(paths["auto"], "auto") == {
        (str(100 + i), None, line["prompt"]) for i, line in enumerate(auto)
    }
    with pytest.raises(harness.HarnessError, match="answered at matryoshka_vis_token_scale=auto"):
        harness.read_answered(paths["auto"], 9)


def test_auto_without_a_policy_file_says_it_is_uncalibrated(
    tmp_path: Path, checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = write_images(tmp_path / "images", 1)
    questions = vqa_questions(tmp_path / "q.jsonl", images)
    argv = common_args(checkpoint, questions, tmp_path / "a.jsonl", "auto", "--image-folder", str(tmp_path / "images"))
    paths = model_vqa_loader.main(argv)
    assert list(paths) == ["auto"] and paths["auto"] == tmp_path / "a.jsonl"
    assert "no calibrated scale policy" in caplog.text
    assert read_jsonl(paths["auto"])[0]["metadata"]["rungs"][0] == 1


def test_a_scale_listed_twice_is_an_error(tmp_path: Path, checkpoint: Path) -> None:
    images = write_images(tmp_path / "images", 1)
    questions = vqa_questions(tmp_path / "q.jsonl", images)
    argv = common_args(
        checkpoint, questions, tmp_path / "a.jsonl", "auto,9,AUTO", "--image-folder", str(tmp_path / "images")
    )
    with pytest.raises(harness.HarnessError, match="lists a scale twice"):
        model_vqa_loader.main(argv)


def test_answers_scored_calibrated_and_swept(tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    images = write_images(tmp_path / "images", 6)
    questions = vqa_questions(tmp_path / "q.jsonl", images)
    argv = common_args(checkpoint, questions, tmp_path / "answers" / "a.jsonl", "1,9,576", "--batch-size", "6")
    paths = model_vqa_loader.main(argv + ["--image-folder", str(tmp_path / "images")])
    # References: the 576-token answers, so 576 is right everywhere and the small budgets where they agree.
    annotations = {
        "data": [
            {"question_id": line["question_id"], "image_id": "i", "question": "q", "answers": [line["text"]] * 10}
            for line in read_jsonl(paths[576])
        ]
    }
    (tmp_path / "gt.json").write_text(json.dumps(annotations))
    results = tmp_path / "results" / "textvqa"

    def score(label: int | str, answers: Path) -> None:
        out = results / str(label)
        out.mkdir(parents=True)
        shutil.copy(answers, out / "answers.jsonl")
        textvqa.main(
            ["--annotation-file", str(tmp_path / "gt.json"), "--answers", str(answers)]
            + ["--output", str(out / "results.json"), "--per-sample", str(out / "per_sample.json")]
        )

    for scale, path in paths.items():
        score(scale, path)
    best = calibrate_scale.main(
        ["--results-dir", str(results), "--max-drop", "0", "--grid", "4", "--model-path", str(checkpoint)]
    )
    assert best.accuracy == pytest.approx(100.0)
    assert read_policy_file(checkpoint / "matryoshka_policy.json").policy == best.policy

    auto = model_vqa_loader.main(
        common_args(checkpoint, questions, tmp_path / "auto.jsonl", "auto", "--image-folder", str(tmp_path / "images"))
    )["auto"]
    score("auto", auto)
    capsys.readouterr()
    sweep.main(["--results-dir", str(tmp_path / "results"), "--out-dir", str(tmp_path / "summary")])
    printed = capsys.readouterr().out
    assert "| textvqa | auto | 100.00 |" in printed and "| textvqa | oracle | 100.00 |" in printed
    for name in ("budgets.md", "budgets.csv", "budgets_tokens.png", "budgets_time.png"):
        assert (tmp_path / "summary" / name).stat().st_size > 0
    rows = (tmp_path / "summary" / "budgets.csv").read_text().splitlines()
    assert rows[0] == "benchmark,budget,score,visual_tokens,visual_tokens_processed,seconds"
    assert [row.split(",")[1] for row in rows[1:]] == ["576", "9", "1", "auto", "oracle"]


def test_the_answer_prompter_asks_again_at_the_budget_that_answered(tmp_path: Path, checkpoint: Path) -> None:
    write_policy_file(checkpoint / "matryoshka_policy.json", ScalePolicy((1, 576), (1.0, 0.0)))
    write_images(tmp_path / "images" / "1", 1)
    problems = [
        {
            "id": "1",
            "image": "1/img_0.png",
            "conversations": [{"from": "human", "value": "<image>\nWhich? (A) a (B) b"}],
        },
        {"id": "2", "conversations": [{"from": "human", "value": "Which is a mammal? (A) whale (B) shark"}]},
    ]
    (tmp_path / "q.json").write_text(json.dumps(problems))
    argv = common_args(checkpoint, tmp_path / "q.json", tmp_path / "a.jsonl", "auto,576", "--answer-prompter")
    paths = model_vqa_science.main(argv + ["--image-folder", str(tmp_path / "images")])
    auto, fixed = read_jsonl(paths["auto"]), read_jsonl(paths[576])
    # The problem with an image walks to 576 and is asked again there; the text-only one answers at the first
    # rung, whose prompt is the same at every budget.
    assert [line["metadata"]["rungs"] for line in auto] == [[1, 576], [1]]
    assert [line["text"] for line in auto] == [line["text"] for line in fixed]
    assert all("\n The answer is " in line["text"] for line in auto)
