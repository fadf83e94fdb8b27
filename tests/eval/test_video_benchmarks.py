"""IG-VLM's video benchmarks through the harness: prompts, grids, one tower pass per grid for every budget, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from generation_helpers import WorkCounter, count_work, read_jsonl
from video_helpers import OPTIONS, choice_row, write_sheet

from llava.constants import IMAGE_TOKEN_INDEX
from llava.eval import harness, model_video_qa, sweep
from llava.eval.harness import HarnessError
from llava.eval.model_video_qa import build_prompt, find_video, read_samples
from llava.eval.scoring import video_choice, video_open_ended
from llava.eval.scoring.common import ScoringError
from llava.eval.scoring.video_common import VideoQuestion, read_questions
from llava.generation import Generator, PromptBatch
from llava.testing import read_frame_index, write_test_video


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> WorkCounter:
    return count_work(monkeypatch)


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name, frames in (("vid_a", 300), ("vid_b", 60), ("vid_c", 90)):
        write_test_video(folder / f"{name}.mp4", frames)
    return folder


def run_args(model: Path, sheet: Path, videos: Path, answers: Path, task: str, scales: str, *extra: str) -> list[str]:
    argv = ["--model-path", str(model), "--question-file", str(sheet), "--path_video", f"{videos}/%s.mp4"]
    argv += ["--answers-file", str(answers), "--task", task, "--matryoshka_vis_token_scale", scales]
    return argv + ["--max_new_tokens", "3", "--device", "cpu", "--num-workers", "0", *extra]


# -- prompts and samples ---------------------------------------------------------------------------


def test_igvlm_prompts_verbatim() -> None:
    question = VideoQuestion(
        "s.csv:2", "q1", "v", "how do the two man play the instrument", "strum the string", tuple(OPTIONS)
    )
    assert build_prompt(question, "multiple-choice", "7b") == (
        "Select correct option to answer the question. USER: <image>\nThe provided image arranges keyframes from a "
        "video in a grid view. Question: how do the two man play the instrument A:roll the handle. B:tap their feet. "
        "C:strum the string. D:hit with sticks. E:pat with hand. \nSelect the correct answer from the options. "
        "\nASSISTANT:\nAnswer:"
    )
    star = VideoQuestion("s.csv:2", "q1", "v", "Which object was thrown?", "The box.", ("A.", "B.", "C.", "D."))
    assert build_prompt(star, "multiple-choice", "13b") == (
        "USER: <image>\nThe provided image arranges keyframes from a video in a grid view. Question: Which object "
        "was thrown??\n A:A.. B:B.. C:C.. D:D.. \n Select the correct answer from the options(A,B,C,D). "
        "\nASSISTANT: \nAnswer:"
    )
    open_question = VideoQuestion("s.csv:2", "q1", "v", "what is a man doing", "cooking")
    assert (
        build_prompt(open_question, "open-ended", "7b")
        == build_prompt(open_question, "open-ended", "13b")
        == (
            "USER: <image>\nThe provided image arranges keyframes from a video in a grid view. Answer concisely with "
            "overall content and context of the video, highlighting any significant events, characters, or objects that "
            "appear throughout the frames. Question: what is a man doing? \nASSISTANT:\nAnswer: In the video,"
        )
    )
    assert build_prompt(open_question, "open-ended", "34b").startswith("<|im_start|>system\n Answer the question.")
    three = VideoQuestion("s.csv:7", "q1", "v", "q", "a", ("a", "b", "c"))
    with pytest.raises(HarnessError, match="s.csv:7: 3 options; IG-VLM's prompts take 5"):
        build_prompt(three, "multiple-choice", "7b")


def test_questions_about_one_video_and_window_share_a_sample(tmp_path: Path, videos: Path) -> None:
    rows = [
        choice_row("q1", "vid_a", 0),
        choice_row("q2", "vid_b", 1),
        choice_row("q3", "vid_a", 2),
        choice_row("q4", "vid_a", 3, ts="2-6"),
    ]
    samples = read_samples(str(write_sheet(tmp_path / "s.csv", rows)), f"{videos}/%s.mp4", "multiple-choice", "7b")
    assert [(Path(s.video_file).name, s.ts, [q.question_id for q in s.queries]) for s in samples] == [
        ("vid_a.mp4", None, ["q1", "q3"]),
        ("vid_b.mp4", None, ["q2"]),
        ("vid_a.mp4", "2-6", ["q4"]),
    ]
    assert all(q.raw for s in samples for q in s.queries)
    assert samples[0].queries[0].fields == {"prompt": rows[0]["question"], "video": "vid_a"}
    # Each sample's image is the grid of its video (of its window).
    grid = samples[2].load_image()
    cells = [grid.crop((c * 96, r * 64, (c + 1) * 96, (r + 1) * 64)) for r in range(3) for c in range(2)]
    assert [read_frame_index(cell) for cell in cells] == [50, 66, 82, 98, 114, 130]  # frames 50..150: 101, interval 16


def test_raw_prompts_reach_the_model_as_written(
    tmp_path: Path, videos: Path, tiny_llava_pad: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sheet = write_sheet(tmp_path / "s.csv", [choice_row("q1", "vid_b", 0)])
    asked: list[tuple[list[list[int]], list[tuple[int, int]]]] = []
    load_model = harness.load_model

    def recording_load_model(*args: Any, **kwargs: Any) -> Generator:
        generator = load_model(*args, **kwargs)
        generate = generator.generate

        def recording_generate(batch: PromptBatch, *rest: Any, **options: Any) -> Any:
            asked.append(([list(ids) for ids in batch.input_ids], list(batch.image_sizes)))
            return generate(batch, *rest, **options)

        monkeypatch.setattr(generator, "generate", recording_generate)
        return generator

    monkeypatch.setattr(harness, "load_model", recording_load_model)
    model_video_qa.main(run_args(tiny_llava_pad, sheet, videos, tmp_path / "a.jsonl", "multiple-choice", "9"))

    # IG-VLM's prompt, tokenised as it is (no template around it), with the grid of six 96x64 frames.
    prompt = read_samples(str(sheet), f"{videos}/%s.mp4", "multiple-choice", "7b")[0].queries[0].text
    expected = load_model(str(tiny_llava_pad), None, "cpu").tokenize(prompt)
    assert asked == [([expected], [(2 * 96, 3 * 64)])]
    assert expected.count(IMAGE_TOKEN_INDEX) == 1


def test_find_video_tries_igvlm_fallbacks(tmp_path: Path) -> None:
    (tmp_path / "abc.mp4").touch()
    (tmp_path / "clip.avi").touch()
    assert find_video(f"{tmp_path}/%s.mp4", "abc") == f"{tmp_path}/abc.mp4"
    assert find_video(f"{tmp_path}/%s.mp4", "v_abc") == f"{tmp_path}/abc.mp4"  # ActivityNet's v_ prefix
    assert find_video(f"{tmp_path}/%s.mp4", "clip") == f"{tmp_path}/clip.avi"
    assert find_video(f"{tmp_path}/%s.mp4", "gone") == f"{tmp_path}/gone.mp4"


def test_missing_videos_stop_before_the_model_loads(tmp_path: Path, videos: Path) -> None:
    sheet = write_sheet(tmp_path / "s.csv", [choice_row("q1", "vid_a", 0), choice_row("q2", "nowhere", 0)])
    argv = run_args(tmp_path / "no-model", sheet, videos, tmp_path / "a.jsonl", "multiple-choice", "9")
    with pytest.raises(HarnessError, match=r"s\.csv:3: video file not found: .*nowhere\.mp4 \(1 missing\)"):
        model_video_qa.main(argv)


def test_bad_sheets(tmp_path: Path) -> None:
    with pytest.raises(ScoringError, match="question file not found"):
        read_questions(tmp_path / "none.csv")
    sheet = write_sheet(tmp_path / "s.csv", [{"video_name": "v", "question_id": "1", "question": "q"}])
    with pytest.raises(ScoringError, match="multiple-choice sheet needs the option columns"):
        read_questions(sheet, multiple_choice=True)
    with pytest.raises(ScoringError, match="no 'answer' column"):
        read_questions(sheet, with_answers=True)
    twice = write_sheet(tmp_path / "t.csv", [choice_row("q1", "v", 0), choice_row("q1", "w", 1)])
    with pytest.raises(ScoringError, match=r"t\.csv:3: question_id 'q1' already used at .*t\.csv:2"):
        read_questions(twice)
    blank = write_sheet(tmp_path / "b.csv", [choice_row("q1", "", 0)])
    with pytest.raises(ScoringError, match=r"b\.csv:2: empty 'video_name'"):
        read_questions(blank)


# -- end to end -----------------------------------------------------------------------------------


def test_multiple_choice_at_several_budgets_one_tower_pass_per_grid_then_resume(
    tmp_path: Path, videos: Path, tiny_llava_pad: Path, work: WorkCounter
) -> None:
    rows = [
        choice_row("q1", "vid_a", 0, question_type="CW"),
        choice_row("q2", "vid_b", 1, question_type="TN"),
        choice_row("q3", "vid_a", 2, question_type="CH"),
        choice_row("q4", "vid_c", 3, question_type="DC"),
        choice_row("q5", "vid_a", 4, question_type="TC", ts="1-5"),
    ]
    sheet = write_sheet(tmp_path / "NExT_QA.csv", rows)
    answers = tmp_path / "answers" / "nextqa.jsonl"
    # One DataLoader worker: the video samples are sent to it and the grids made there.
    argv = run_args(tiny_llava_pad, sheet, videos, answers, "multiple-choice", "576,36,1", "--num-workers", "1")
    paths = model_video_qa.main(argv)

    # Four grids (vid_a, vid_b, vid_c, vid_a 1-5 s), each through the tower once (one crop) for all three budgets.
    assert work.tower_batches == [1, 1, 1, 1]
    assert work.generate_calls == 5 * 3
    assert paths == {s: answers.with_name(f"nextqa_s{s}.jsonl") for s in (576, 36, 1)}
    for scale, path in paths.items():
        lines = read_jsonl(path)
        assert [line["question_id"] for line in lines] == ["q1", "q3", "q2", "q4", "q5"]
        assert {line["metadata"]["matryoshka_vis_token_scale"] for line in lines} == {scale}
        assert lines[0]["prompt"] == rows[0]["question"] and lines[0]["video"] == "vid_a"

    # A rerun answers nothing; a lost answer is answered again from one tower pass over its grid only.
    work.reset()
    model_video_qa.main(argv)
    assert work.tower_calls == 0 and work.generate_calls == 0
    kept = paths[36].read_text(encoding="utf-8").splitlines()
    paths[36].write_text("\n".join(line for line in kept if '"q4"' not in line) + "\n", encoding="utf-8")
    model_video_qa.main(argv)
    assert work.tower_batches == [1] and work.generate_calls == 1
    assert sorted(line["question_id"] for line in read_jsonl(paths[36])) == ["q1", "q2", "q3", "q4", "q5"]

    # Scored per budget, and compared across budgets by the sweep.
    results = tmp_path / "results"
    for scale, path in paths.items():
        out = results / "nextqa" / str(scale)
        video_choice.main(
            ["--question-file", str(sheet), "--answers", str(path)]
            + ["--output", str(out / "results.json"), "--per-sample", str(out / "per_sample.json")]
        )
        scored = json.loads((out / "results.json").read_text())
        assert scored["num_questions"] == 5 and scored["num_missing"] == 0
        assert set(scored["accuracy_per_type_group"]) == {"C", "T", "D"}
    scores = sweep.main(["--results-dir", str(results), "--out-dir", str(tmp_path / "summary")])
    assert set(scores["nextqa"]) == {576, 36, 1}


def test_open_ended_on_an_anyres_checkpoint(
    tmp_path: Path, videos: Path, tiny_llava_anyres: Path, work: WorkCounter
) -> None:
    rows = [
        {"video_name": "vid_b", "question_id": "7", "question": "what is red", "answer": "a square"},
        {"video_name": "vid_c", "question_id": "8", "question": "what color is the background", "answer": "navy"},
        {"video_name": "vid_b", "question_id": "9", "question": "what moves", "answer": "square"},
    ]
    sheet = write_sheet(tmp_path / "MSVD_QA.csv", rows)
    answers = tmp_path / "msvd.jsonl"
    paths = model_video_qa.main(run_args(tiny_llava_anyres, sheet, videos, answers, "open-ended", "9,144"))
    # One tower pass per grid: the base image and the anyres crops of the grid go through together.
    assert work.tower_calls == 2
    assert all(crops > 1 for crops in work.tower_batches)
    for path in paths.values():
        results = video_open_ended.main(["--question-file", str(sheet), "--answers", str(path)])
        assert results["metric"] == "exact_match" and results["num_questions"] == 3 and results["num_missing"] == 0
