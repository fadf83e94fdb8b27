"""scripts/v1_5/eval/*.sh: valid bash, and one benchmark script run end to end on a tiny checkpoint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from generation_helpers import read_jsonl, script_env, write_images, write_jsonl

from llava.eval import harness, prepare_textvqa, sweep
from llava.eval.harness import HarnessError

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "v1_5" / "eval"
BENCHMARKS = ["gqa", "llavabench", "mmbench", "mmbench_cn", "mme", "mmvet", "pope", "seed", "sqa", "textvqa", "vizwiz"]


def test_one_script_per_benchmark_and_all_parse() -> None:
    assert sorted(p.stem for p in SCRIPTS.glob("*.sh")) == sorted(BENCHMARKS + ["common", "vqav2"])
    for script in SCRIPTS.glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize(("scales", "expected"), [("36", "a/merge.jsonl"), ("9,36", "a/merge_s36.jsonl")])
def test_scripts_name_answers_files_as_the_harness_does(scales: str, expected: str) -> None:
    command = f'source "{SCRIPTS}/common.sh" {scales} && scale_file a/merge.jsonl 36'
    out = subprocess.run(["bash", "-c", command], check=True, capture_output=True, text=True).stdout.strip()
    assert Path(out) == harness.scale_answers_file("a/merge.jsonl", 36, several="," in scales) == Path(expected)


@pytest.mark.slow
def test_pope_script_two_chunks_two_scales_then_sweep(tmp_path: Path, tiny_llava_pad: Path) -> None:
    pope = tmp_path / "eval" / "pope"
    names = write_images(pope / "val2014", 2)
    splits = ["adversarial", "popular", "random"]
    questions = [
        {"question_id": i + 1, "image": names[i % 2], "text": "Is there a dog in the image?", "category": split}
        for i, split in enumerate(splits)
    ]
    write_jsonl(pope / "llava_pope_test.jsonl", questions)
    (pope / "coco").mkdir()
    for i, split in enumerate(splits):
        label = {"question_id": 1, "image": names[i % 2], "text": "Is there a dog?", "label": "yes" if i else "no"}
        write_jsonl(pope / "coco" / f"coco_pope_{split}.json", [label])
    # Two chunks, answered by two processes, merged per scale.
    env = script_env(tmp_path, tiny_llava_pad, CUDA_VISIBLE_DEVICES="0,1")
    subprocess.run(["bash", str(SCRIPTS / "pope.sh"), "9,576"], env=env, check=True, capture_output=True)

    answers = pope / "answers" / "llava-v1.5-tiny-m3"
    assert sorted(p.name for p in answers.glob("*.jsonl")) == [
        "2_0_s576.jsonl", "2_0_s9.jsonl", "2_1_s576.jsonl", "2_1_s9.jsonl", "merge_s576.jsonl", "merge_s9.jsonl"
    ]  # fmt: skip
    for scale in (9, 576):
        assert [line["question_id"] for line in read_jsonl(answers / f"merge_s{scale}.jsonl")] == [1, 2, 3]
        results = json.loads((tmp_path / "results" / "pope" / str(scale) / "results.json").read_text())
        assert results["score"] is not None
    scores = sweep.main(["--results-dir", str(tmp_path / "results")])
    assert set(scores["pope"]) == {9, 576}


def test_textvqa_question_ids_from_llava_file(tmp_path: Path) -> None:
    # LLaVA's file: question_id is the image id, shared by the image's questions.
    llava = [
        {
            "question_id": "abc",
            "image": "abc.jpg",
            "text": "what brand is it?\nReference OCR token: Nikon\nAnswer briefly.",
        },
        {"question_id": "abc", "image": "abc.jpg", "text": "what colour is it?\nAnswer the question briefly."},
    ]
    write_jsonl(tmp_path / "llava.jsonl", llava)
    annotations = {"data": [{"question_id": 7, "image_id": "abc", "question": "What brand is it?", "answers": ["x"]}]}
    annotations["data"].append(
        {"question_id": 8, "image_id": "abc", "question": "What colour is it?", "answers": ["y"]}
    )
    (tmp_path / "val.json").write_text(json.dumps(annotations))
    out = prepare_textvqa.main(
        ["--question-file", str(tmp_path / "llava.jsonl"), "--annotation-file", str(tmp_path / "val.json")]
        + ["--output", str(tmp_path / "qid.jsonl")]
    )
    assert read_jsonl(out) == [llava[0] | {"question_id": 7}, llava[1] | {"question_id": 8}]
    write_jsonl(tmp_path / "llava.jsonl", [llava[0] | {"question_id": "zzz"}])
    with pytest.raises(HarnessError, match=r"llava.jsonl:1: image 'zzz' question 'what brand is it\?' is not in"):
        prepare_textvqa.with_textvqa_ids(tmp_path / "llava.jsonl", tmp_path / "val.json")
