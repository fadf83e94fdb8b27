"""Benchmark prompt building on real file formats: ScienceQA's LLaVA JSON and MMBench's base64 TSV."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from generation_helpers import WorkCounter, common_args, count_work, read_jsonl, write_images
from PIL import Image

from llava.eval import harness, model_vqa_mmbench, model_vqa_science
from llava.eval.scoring import mmbench, scienceqa

SINGLE = "Answer with the option's letter from the given choices directly."


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> WorkCounter:
    return count_work(monkeypatch)


# -- ScienceQA -------------------------------------------------------------------------------------


@pytest.fixture
def science(tmp_path: Path) -> Path:
    """LLaVA's llava_test_CQM-A.json layout: one problem with an image, one text-only."""
    write_images(tmp_path / "images" / "test" / "1", 1)
    problems = [
        {
            "id": "1",
            "image": "1/img_0.png",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nContext: A map.\nWhich state is north?\nOptions: (A) Utah (B) Texas",
                },
                {"from": "gpt", "value": "The answer is A."},
            ],
        },
        {
            "id": "2",
            "conversations": [{"from": "human", "value": "Which is a mammal?\nOptions: (A) whale (B) shark (C) eel"}],
        },
    ]
    path = tmp_path / "llava_test_CQM-A.json"
    path.write_text(json.dumps(problems), encoding="utf-8")
    return path


def test_science_prompts(science: Path, tmp_path: Path) -> None:
    samples = model_vqa_science.read_samples(str(science), str(tmp_path / "images" / "test"), single_pred_prompt=True)
    with_image, text_only = samples
    assert with_image.image_file == str(tmp_path / "images" / "test" / "1" / "img_0.png")
    query = with_image.queries[0]
    # The image marker is the harness's to place; the recorded prompt shows it as LLaVA's does.
    assert query.text == f"Context: A map.\nWhich state is north?\nOptions: (A) Utah (B) Texas\n{SINGLE}"
    assert query.fields["prompt"] == "<image>\n" + query.text
    assert query.question_id == "1" and query.followup is None
    assert text_only.image_file is None
    assert (
        text_only.queries[0].fields["prompt"] == f"Which is a mammal?\nOptions: (A) whale (B) shark (C) eel\n{SINGLE}"
    )
    plain = model_vqa_science.read_samples(str(science), "", single_pred_prompt=False)
    assert plain[1].queries[0].text == "Which is a mammal?\nOptions: (A) whale (B) shark (C) eel"


def test_science_end_to_end_with_the_answer_prompter(
    science: Path, tmp_path: Path, tiny_llava_pad: Path, work: WorkCounter
) -> None:
    argv = common_args(tiny_llava_pad, science, tmp_path / "answers.jsonl", "1,576")
    argv += ["--image-folder", str(tmp_path / "images" / "test"), "--single-pred-prompt", "--answer-prompter"]
    paths = model_vqa_science.main(argv)
    assert work.tower_batches == [1]  # only problem 1 has an image
    assert work.generate_calls == 2 * 2 * 2  # 2 problems x 2 scales x (reasoning, then the answer)
    for path in paths.values():
        lines = read_jsonl(path)
        assert [line["question_id"] for line in lines] == ["1", "2"]
        assert all("\n The answer is " in line["text"] for line in lines)
    problems = {
        "1": {
            "question": "q",
            "choices": ["Utah", "Texas"],
            "answer": 0,
            "subject": "social science",
            "grade": "grade4",
        }
        | {"image": "image.png", "hint": "A map."},
        "2": {"question": "q", "choices": ["whale", "shark", "eel"], "answer": 0, "subject": "natural science"}
        | {"grade": "grade8", "image": None, "hint": ""},
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2"]}))
    results = scienceqa.main(
        ["--problems", str(tmp_path / "problems.json"), "--split-file", str(tmp_path / "pid_splits.json")]
        + ["--answers", str(paths[576])]
    )
    assert results["num_missing"] == 0


def test_science_bad_problem_is_named(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"id": "1", "conversations": []}]))
    with pytest.raises(harness.HarnessError, match=r"q.json\[0\]: a problem needs 'id' and 'conversations'"):
        model_vqa_science.read_samples(str(path), "", single_pred_prompt=False)


# -- MMBench ---------------------------------------------------------------------------------------

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]


def _b64_png(size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def mmbench_tsv(tmp_path: Path) -> Path:
    """Two questions (4 and 3 options) and a circular copy of the first whose image refers to row 0."""
    common = {"category": "attribute", "l2-category": "perception", "split": "dev"}
    rows = [
        {"index": 0, "question": "Which animal?", "hint": "", "A": "cat", "B": "dog", "C": "cow", "D": "pig"}
        | {"answer": "B", "image": _b64_png((48, 40), (200, 0, 0))},
        {"index": 1, "question": "什么颜色?", "hint": "看图", "A": "红", "B": "绿", "C": "蓝", "D": ""}
        | {"answer": "A", "image": _b64_png((30, 48), (0, 200, 0))},
        {"index": 1_000_000, "question": "Which animal?", "hint": "", "A": "dog", "B": "cow", "C": "pig", "D": "cat"}
        | {"answer": "A", "image": "0"},
    ]
    path = tmp_path / "mmbench_dev_20230712.tsv"
    pd.DataFrame([row | common for row in rows], columns=COLUMNS).to_csv(path, sep="\t", index=False)
    return path


def test_mmbench_rotations(mmbench_tsv: Path) -> None:
    samples = model_vqa_mmbench.read_samples(str(mmbench_tsv), all_rounds=True, single_pred_prompt=SINGLE)
    assert [len(s.queries) for s in samples] == [4, 3, 4]
    rounds = samples[0].queries
    assert [q.round_idx for q in rounds] == [0, 1, 2, 3]
    assert rounds[0].fields["prompt"] == "Which animal?\nA. cat\nB. dog\nC. cow\nD. pig"
    # Round 1 shows original option B first: displayed A is original B, displayed D original A.
    assert rounds[1].fields["prompt"] == "Which animal?\nA. dog\nB. cow\nC. pig\nD. cat"
    assert rounds[1].fields["options"] == ["dog", "cow", "pig", "cat"]
    assert rounds[1].fields["option_char"] == ["B", "C", "D", "A"]
    assert rounds[1].text == rounds[1].fields["prompt"] + "\n" + SINGLE
    assert samples[1].queries[2].fields["prompt"] == "看图\n什么颜色?\nA. 蓝\nB. 红\nC. 绿"  # hint first, 3 options
    assert samples[2].image_base64 == samples[0].image_base64  # the circular copy's image refers to row 0
    single = model_vqa_mmbench.read_samples(str(mmbench_tsv), all_rounds=False, single_pred_prompt=None)
    assert [len(s.queries) for s in single] == [1, 1, 1]
    assert single[0].queries[0].text == "Which animal?\nA. cat\nB. dog\nC. cow\nD. pig"


def test_mmbench_end_to_end_rounds_and_scales_share_one_encoding(
    mmbench_tsv: Path, tmp_path: Path, tiny_llava_pad: Path, work: WorkCounter
) -> None:
    argv = common_args(tiny_llava_pad, mmbench_tsv, tmp_path / "answers.jsonl", "9,576")
    paths = model_vqa_mmbench.main(argv + ["--all-rounds", "--single-pred-prompt", "--lang", "cn", "--batch-size", "4"])
    # One tower call for the 3 rows' images; their 11 rounds are then asked 4 at a time at each scale.
    assert work.tower_batches == [3]
    assert work.generate_rows == [4, 4, 3, 4, 4, 3]
    for scale, path in paths.items():
        lines = read_jsonl(path)
        assert [(line["question_id"], line["round_idx"]) for line in lines] == [(0, r) for r in range(4)] + [
            (1, r) for r in range(3)
        ] + [(1_000_000, r) for r in range(4)]
        assert lines[4]["prompt"] == "看图\n什么颜色?\nA. 红\nB. 绿\nC. 蓝"
        assert lines[0]["metadata"]["matryoshka_vis_token_scale"] == scale
        results = mmbench.main(["--tsv", str(mmbench_tsv), "--answers", str(path)])
        assert results["num_rows_without_answer"] == 0 and results["num_questions"] == 2


def test_mmbench_bad_rows_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    row = {"index": 5, "question": "q", "hint": "", "A": "a", "B": "b", "C": "", "D": "", "answer": "A", "image": "9"}
    pd.DataFrame([row], columns=COLUMNS).to_csv(path, sep="\t", index=False)
    with pytest.raises(harness.HarnessError, match=r"bad.tsv:2: image refers to row index 9, which is not in the TSV"):
        model_vqa_mmbench.read_samples(str(path), all_rounds=False, single_pred_prompt=None)
