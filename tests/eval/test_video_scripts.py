"""scripts/video/*.sh: one per benchmark, valid bash, and two run end to end on a tiny checkpoint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from generation_helpers import read_jsonl, script_env
from video_helpers import choice_row, write_sheet

from llava.eval import sweep
from llava.testing import write_test_video

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "video"
BENCHMARKS = ["activitynet", "egoschema", "intentqa", "msrvtt", "msvd", "nextqa", "star", "textgen", "tgif", "tvqa"]


def test_one_script_per_benchmark_and_all_parse() -> None:
    assert sorted(p.stem for p in SCRIPTS.glob("*.sh")) == sorted(BENCHMARKS + ["common"])
    for script in SCRIPTS.glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.slow
def test_star_two_chunks_two_scales_then_sweep(tmp_path: Path, tiny_llava_pad: Path) -> None:
    video = tmp_path / "eval" / "video"
    (video / "star" / "videos").mkdir(parents=True)
    for name in ("6H78U_11.1_19.6", "RNLTR_7.3_13.5"):
        write_test_video(video / "star" / "videos" / f"{name}.mp4", 40)
    rows = [  # STAR: four options, a0..a3
        {
            k: v
            for k, v in choice_row(f"Interaction_T1_{i}", name, i, question_type="Interaction_T1").items()
            if k != "a4"
        }
        for i, name in enumerate(["6H78U_11.1_19.6", "RNLTR_7.3_13.5", "6H78U_11.1_19.6"])
    ]
    (video / "sheets" / "multiple_choice_qa").mkdir(parents=True)
    write_sheet(video / "sheets" / "multiple_choice_qa" / "STAR.csv", rows)
    env = script_env(tmp_path, tiny_llava_pad, CUDA_VISIBLE_DEVICES="0,1")
    subprocess.run(["bash", str(SCRIPTS / "star.sh"), "9,576"], env=env, check=True, capture_output=True)

    answers = video / "answers" / "llava-v1.5-tiny-m3" / "star"
    for scale in (9, 576):
        merged = read_jsonl(answers / f"merge_s{scale}.jsonl")
        assert sorted(line["question_id"] for line in merged) == [row["question_id"] for row in rows]
        results = json.loads((tmp_path / "results" / "star" / str(scale) / "results.json").read_text())
        assert results["num_questions"] == 3 and results["num_missing"] == 0
        assert set(results["accuracy_per_type_group"]) == {"I"}
    assert set(sweep.main(["--results-dir", str(tmp_path / "results")])["star"]) == {9, 576}


@pytest.mark.slow
def test_textgen_pairs_the_consistency_sheets(tmp_path: Path, tiny_llava_pad: Path) -> None:
    video = tmp_path / "eval" / "video"
    (video / "activitynet" / "videos").mkdir(parents=True)
    write_test_video(video / "activitynet" / "videos" / "p1QGn0IzfW0.mp4", 40)  # the sheets say v_p1QGn0IzfW0
    sheets = video / "sheets" / "text_generation_benchmark"
    sheets.mkdir(parents=True)
    row = {"video_name": "v_p1QGn0IzfW0", "question_id": "v_p1QGn0IzfW0_0", "answer": "A red square slides right."}
    for name, question in [
        ("Generic_QA", "What is in the video?"),
        ("Temporal_QA", "What happens first?"),
        ("Consistency_QA1", "What moves?"),
        ("Consistency_QA2", "Can you describe what moves?"),
    ]:
        write_sheet(sheets / f"{name}.csv", [{**row, "question": question}])
    subprocess.run(["bash", str(SCRIPTS / "textgen.sh"), "36"], env=script_env(tmp_path, tiny_llava_pad), check=True)

    for name in ("textgen_generic", "textgen_temporal", "textgen_consistency"):
        results = json.loads((tmp_path / "results" / name / "36" / "results.json").read_text())
        assert results["metric"] == "exact_match" and results["num_questions"] == 1 and results["num_missing"] == 0
    assert "agreement" in json.loads((tmp_path / "results" / "textgen_consistency" / "36" / "results.json").read_text())
    assert not list((tmp_path / "results").glob("*_gpt"))  # no judge without JUDGE_MODEL
