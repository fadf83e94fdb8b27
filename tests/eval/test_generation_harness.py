"""The evaluation harness: one-pass multi-scale answers, scoring and sweep, resume, chunks, batching, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from generation_helpers import (
    WorkCounter,
    common_args,
    count_work,
    read_jsonl,
    vqa_questions,
    write_images,
    write_jsonl,
)

from llava.eval import harness, model_vqa, model_vqa_loader, sweep
from llava.eval.scoring import mme, textvqa
from llava.eval.scoring.common import read_jsonl as read_scored_jsonl
from llava.eval.scoring.common import run_cli


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> WorkCounter:
    return count_work(monkeypatch)


def _ids(path: Path) -> list[int]:
    return [line["question_id"] for line in read_jsonl(path)]


def test_every_scale_in_one_pass_then_scored_and_swept(tmp_path: Path, tiny_llava_pad: Path, work: WorkCounter) -> None:
    images = write_images(tmp_path / "images", 4)
    questions = vqa_questions(tmp_path / "llava_textvqa_val.jsonl", images)
    argv = common_args(tiny_llava_pad, questions, tmp_path / "answers" / "m3.jsonl", "576,9,1")
    paths = model_vqa_loader.main(argv + ["--image-folder", str(tmp_path / "images")])

    # The vision tower ran once per image (one crop each), not once per image and scale.
    assert work.tower_batches == [1, 1, 1, 1]
    assert work.generate_calls == 4 * 3
    assert paths == {s: tmp_path / "answers" / f"m3_s{s}.jsonl" for s in (576, 9, 1)}
    for scale, path in paths.items():
        lines = read_jsonl(path)
        assert [line["question_id"] for line in lines] == [100, 101, 102, 103]
        assert {line["metadata"]["matryoshka_vis_token_scale"] for line in lines} == {scale}
        assert lines[0]["prompt"] == "What is written in picture 0?\nAnswer briefly."
        assert lines[0]["model_id"] == "llava-v1.5-tiny-m3"
        assert set(lines[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}

    # Score each scale with the TextVQA scorer and compare the scales with the sweep.
    annotations = {
        "data": [
            {"question_id": 100 + i, "image_id": f"img_{i}", "question": "q", "answers": [line["text"]] * 3 + ["x"] * 7}
            for i, line in enumerate(read_jsonl(paths[576]))
        ]
    }
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(annotations), encoding="utf-8")
    results = tmp_path / "results"
    for scale, path in paths.items():
        out = results / "textvqa" / str(scale)
        textvqa.main(
            ["--annotation-file", str(tmp_path / "TextVQA_0.5.1_val.json"), "--answers", str(path)]
            + ["--output", str(out / "results.json"), "--per-sample", str(out / "per_sample.json")]
        )
    # The references are the 576-token answers said by 3 of 10 humans: 90% at 576 tokens.
    assert json.loads((results / "textvqa" / "576" / "results.json").read_text())["score"] == pytest.approx(90.0)
    scores = sweep.main(["--results-dir", str(results), "--out-dir", str(tmp_path / "summary")])
    assert set(scores["textvqa"]) == {576, 9, 1}
    for name in ("sweep.md", "sweep.csv", "sweep.png", "oracle.md", "oracle.csv"):
        assert (tmp_path / "summary" / name).stat().st_size > 0


def test_one_scale_writes_the_answers_file_itself(tmp_path: Path, tiny_llava_pad: Path) -> None:
    images = write_images(tmp_path / "images", 1)
    questions = vqa_questions(tmp_path / "q.jsonl", images)
    answers = tmp_path / "answers.jsonl"
    paths = model_vqa.main(
        common_args(tiny_llava_pad, questions, answers, "36", "--image-folder", str(tmp_path / "images"))
    )
    assert paths == {36: answers}
    metadata = read_jsonl(answers)[0]["metadata"]
    assert set(metadata) == {
        "matryoshka_vis_token_scale",
        "p_first",
        "visual_tokens",
        "visual_tokens_processed",
        "seconds",
    }
    assert metadata["matryoshka_vis_token_scale"] == 36
    assert metadata["visual_tokens"] == metadata["visual_tokens_processed"] == 36
    assert 0 < metadata["p_first"] <= 1 and metadata["seconds"] > 0


def test_answers_file_names_per_scale() -> None:
    assert harness.scale_answers_file("a/answers.jsonl", 36, several=True) == Path("a/answers_s36.jsonl")
    assert harness.scale_answers_file("a/merge.jsonl", 576, several=True) == Path("a/merge_s576.jsonl")
    assert harness.scale_answers_file("a/answers.jsonl", 36, several=False) == Path("a/answers.jsonl")


def test_resume_after_an_interruption_recomputes_nothing(
    tmp_path: Path, tiny_llava_pad: Path, work: WorkCounter
) -> None:
    images = write_images(tmp_path / "images", 5)
    questions = vqa_questions(tmp_path / "q.jsonl", images)
    argv = common_args(
        tiny_llava_pad, questions, tmp_path / "a.jsonl", "1,576", "--image-folder", str(tmp_path / "images")
    )
    paths = model_vqa_loader.main(argv)
    complete = {s: read_jsonl(p) for s, p in paths.items()}

    # Stopped while writing: scale 1 has answers 0 and 2 (say, from two chunks' processes), scale 576 has
    # answers 0 and 1 and half of the line of answer 2.
    lines_1 = paths[1].read_text().splitlines(keepends=True)
    lines_576 = paths[576].read_text().splitlines(keepends=True)
    paths[1].write_text(lines_1[0] + lines_1[2])
    paths[576].write_text("".join(lines_576[:2]) + lines_576[2][:25])
    work.reset()
    model_vqa_loader.main(argv)
    # Image 0 is answered at both scales and is not even encoded; 1 lacks scale 1, 2 both, 3 and 4 both.
    assert work.tower_calls == 4
    assert work.generate_calls == 3 + 3
    kept = {1: [0, 2], 576: [0, 1]}
    for scale, path in paths.items():
        lines = read_jsonl(path)
        assert _ids(path) == [100, 101, 102, 103, 104]  # complete, no duplicates, back in question order
        assert [line["text"] for line in lines] == [line["text"] for line in complete[scale]]  # greedy
        for i in kept[scale]:
            assert lines[i]["answer_id"] == complete[scale][i]["answer_id"]  # not recomputed

    work.reset()
    model_vqa_loader.main(argv)  # everything answered: nothing to do
    assert (work.tower_calls, work.generate_calls) == (0, 0)
    assert all(len(read_jsonl(p)) == 5 for p in paths.values())


def test_resume_refuses_a_file_written_at_another_scale(tmp_path: Path, tiny_llava_pad: Path) -> None:
    images = write_images(tmp_path / "images", 1)
    questions = vqa_questions(tmp_path / "q.jsonl", images)
    answers = write_jsonl(
        tmp_path / "a.jsonl", [{"question_id": 100, "text": "x", "metadata": {"matryoshka_vis_token_scale": 9}}]
    )
    argv = common_args(tiny_llava_pad, questions, answers, "36", "--image-folder", str(tmp_path / "images"))
    with pytest.raises(harness.HarnessError, match=r"a.jsonl:1: answered at matryoshka_vis_token_scale=9.*scale 36"):
        model_vqa.main(argv)
    model_vqa.main(argv + ["--overwrite"])
    assert _ids(answers) == [100]


@pytest.mark.parametrize("num_items", [0, 1, 5, 7])
@pytest.mark.parametrize("num_chunks", [1, 2, 3, 4])
def test_chunks_are_disjoint_contiguous_and_cover_everything(num_items: int, num_chunks: int) -> None:
    items = list(range(num_items))
    chunks = [harness.get_chunk(items, num_chunks, i) for i in range(num_chunks)]
    assert [x for chunk in chunks for x in chunk] == items  # disjoint, in order, complete
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_chunked_runs_answer_disjoint_questions(tmp_path: Path, tiny_llava_pad: Path) -> None:
    images = write_images(tmp_path / "images", 5)
    questions = vqa_questions(tmp_path / "q.jsonl", images)
    answered = []
    for idx in range(2):
        answers = tmp_path / f"2_{idx}.jsonl"
        argv = common_args(tiny_llava_pad, questions, answers, None, "--image-folder", str(tmp_path / "images"))
        model_vqa_loader.main(argv + ["--num-chunks", "2", "--chunk-idx", str(idx)])
        answered.append(_ids(answers))
    assert answered == [[100, 101], [102, 103, 104]]
    with pytest.raises(harness.HarnessError, match=r"--chunk-idx 2 is not in 0..1"):
        model_vqa_loader.main(argv + ["--num-chunks", "2", "--chunk-idx", "2"])


@pytest.mark.parametrize("checkpoint", ["tiny_llava_pad", "tiny_llava_anyres"])
def test_batched_answers_equal_one_at_a_time(
    tmp_path: Path, checkpoint: str, request: pytest.FixtureRequest, work: WorkCounter
) -> None:
    model = request.getfixturevalue(checkpoint)
    images = write_images(tmp_path / "images", 5)  # different sizes: anyres prompts differ in length
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [{"question_id": i, "image": name, "text": "Describe it." + " Please." * i} for i, name in enumerate(images)],
    )
    texts, tower_calls = {}, {}
    for batch_size in (1, 3):
        answers = tmp_path / f"b{batch_size}.jsonl"
        argv = common_args(model, questions, answers, "9,144", "--image-folder", str(tmp_path / "images"))
        work.reset()
        paths = model_vqa_loader.main(argv + ["--batch-size", str(batch_size), "--max_new_tokens", "6"])
        texts[batch_size] = {s: [line["text"] for line in read_jsonl(p)] for s, p in paths.items()}
        tower_calls[batch_size] = work.tower_calls
    assert texts[3] == texts[1]
    assert work.generate_rows == [3, 3, 2, 2]  # batches of 3 and 2 images, each asked at 2 scales
    assert tower_calls == {1: 5, 3: 2}  # one tower call per batch of images, whatever the scales


def test_missing_image_is_named_with_its_question_line(tmp_path: Path, tiny_llava_pad: Path) -> None:
    images = write_images(tmp_path / "images", 2)
    questions = vqa_questions(tmp_path / "q.jsonl", images + ["nowhere.png"])
    argv = common_args(
        tiny_llava_pad, questions, tmp_path / "a.jsonl", None, "--image-folder", str(tmp_path / "images")
    )
    with pytest.raises(harness.HarnessError, match=r"q.jsonl:3: image file not found: .*nowhere.png"):
        model_vqa.main(argv)


def test_malformed_question_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "image": "a.png", "text": "hi"}\n\n{"question_id": 2, "image": \n')
    with pytest.raises(harness.HarnessError, match=r"q.jsonl:3: invalid JSON"):
        model_vqa.read_samples(str(path), "")
    path.write_text('{"question_id": 1, "image": "a.png"}\n')
    with pytest.raises(harness.HarnessError, match=r"q.jsonl:1: question has no 'text'"):
        model_vqa.read_samples(str(path), "")
    path.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "a"}\n')
    with pytest.raises(
        harness.HarnessError, match=r"q.jsonl:2: question_id '1' with the same prompt already appears at .*q.jsonl:1"
    ):
        harness.check_unique(model_vqa.read_samples(str(path), ""))


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, tiny_llava_pad: Path) -> None:
    argv = common_args(tiny_llava_pad, tmp_path / "absent.jsonl", tmp_path / "a.jsonl", None)
    with pytest.raises(SystemExit, match=r"^error: .*absent.jsonl: file not found$"):
        run_cli(lambda: model_vqa.main(argv))


def test_an_invalid_scale_is_refused_before_any_answer(tmp_path: Path, tiny_llava_pad: Path) -> None:
    images = write_images(tmp_path / "images", 1)
    questions = vqa_questions(tmp_path / "q.jsonl", images)
    argv = common_args(
        tiny_llava_pad, questions, tmp_path / "a.jsonl", "36,7", "--image-folder", str(tmp_path / "images")
    )
    with pytest.raises(ValueError, match=r"matryoshka_vis_token_scale=7 is not a valid .* valid values: \[1, 4, 9"):
        model_vqa.main(argv)
    assert not (tmp_path / "a_s36.jsonl").exists()


def test_questions_sharing_an_id_are_told_apart_by_their_prompt(
    tmp_path: Path, tiny_llava_pad: Path, work: WorkCounter
) -> None:
    # LLaVA's llava_mme.jsonl: the id is the image path, shared by the image's yes and the no question.
    release = tmp_path / "MME_Benchmark_release_version"
    write_images(release / "artwork", 2)
    rows, gt_lines = [], {}
    for i in range(2):
        for j, truth in enumerate(("Yes", "No")):
            question = f"Is this painting number {i + j}? Please answer yes or no."
            rows.append({"question_id": f"artwork/img_{i}.png", "image": f"artwork/img_{i}.png"})
            rows[-1]["text"] = question + "\nAnswer the question using a single word or phrase."
            gt_lines.setdefault(i, []).append(f"{question}\t{truth}")
    for i, lines in gt_lines.items():
        (release / "artwork" / f"img_{i}.txt").write_text("\n".join(lines) + "\n")
    questions = write_jsonl(tmp_path / "llava_mme.jsonl", rows)
    answers = tmp_path / "mme.jsonl"
    argv = common_args(tiny_llava_pad, questions, answers, "9", "--image-folder", str(release))
    model_vqa_loader.main(argv)
    complete = read_jsonl(answers)
    answers.write_text("".join(answers.read_text().splitlines(keepends=True)[:3]))  # stopped before the last
    work.reset()
    model_vqa_loader.main(argv)
    assert (work.tower_calls, work.generate_calls) == (1, 1)
    assert [(line["question_id"], line["prompt"]) for line in read_jsonl(answers)] == [
        (row["question_id"], row["text"]) for row in rows
    ]
    assert [line["answer_id"] for line in read_jsonl(answers)[:3]] == [line["answer_id"] for line in complete[:3]]
    results = mme.main(["--answers", str(answers), "--gt-dir", str(release)])
    assert results["missing_subtasks"] and "artwork" not in results["missing_subtasks"]


def test_an_answer_holding_a_line_separator_character_stays_one_line(tmp_path: Path) -> None:
    # Answers are written unescaped (ensure_ascii=False); U+2028 is not a line end in JSONL.
    answers = write_jsonl(
        tmp_path / "a.jsonl", [{"question_id": 1, "prompt": "p", "text": "one\u2028two"}, {"question_id": 2}]
    )
    assert harness.read_answered(answers, 9) == {("1", None, "p"), ("2", None, None)}
    assert [row["text"] for _, row in read_scored_jsonl(answers)[:1]] == ["one\u2028two"]
