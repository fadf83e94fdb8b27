"""Calibrating the adaptive budget: exact policy scoring, the threshold search, its files and its errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llava.eval import calibrate_scale
from llava.eval.calibrate_scale import CalibrationError, Target, build_table, search, simulate, threshold_curve
from llava.scale_policy import ScalePolicy, read_policy_file

# Four questions, three scales: (correct, p_first, visual tokens).
HAND = {
    1: {"a": (1.0, 0.95, 1), "b": (0.0, 0.50, 1), "c": (0.0, 0.90, 1), "d": (0.0, 0.20, 1)},
    9: {"a": (1.0, 0.99, 9), "b": (1.0, 0.80, 9), "c": (0.0, 0.60, 9), "d": (0.0, 0.30, 9)},
    36: {"a": (1.0, 0.99, 36), "b": (1.0, 0.90, 36), "c": (1.0, 0.70, 36), "d": (0.0, 0.40, 36)},
}


def test_simulate_walks_each_sample_up_the_ladder() -> None:
    table = build_table(HAND)
    outcome = simulate(table, ScalePolicy((1, 9, 36), (0.85, 0.75, 0.0)))
    # a: 1 (0.95 > 0.85, right); b: 1 no, 9 yes (0.80 > 0.75, right); c: 1 yes (0.90, wrong); d: to 36 (wrong).
    assert outcome.answered_at == {1: 2, 9: 1, 36: 1}
    assert outcome.accuracy == pytest.approx(50.0)
    assert outcome.visual_tokens == pytest.approx((1 + 9 + 1 + 36) / 4)
    assert outcome.visual_tokens_processed == pytest.approx((1 + 10 + 1 + 46) / 4)


def test_one_threshold_curve_runs_from_the_lowest_to_the_highest_rung() -> None:
    table = build_table(HAND)
    curve = threshold_curve(table, [1, 9, 36])
    assert (curve[0].accuracy, curve[0].visual_tokens_processed) == (25.0, 1.0)  # threshold 0
    assert (curve[-1].accuracy, curve[-1].visual_tokens_processed) == (75.0, 46.0)  # threshold 1


def test_search_finds_the_cheapest_policy_within_the_drop() -> None:
    table = build_table(HAND)
    # 36 scores 75%; at most 25 points below is 50%: 1 -> 9 with c kept at 1 reaches it for (1+10+1+10)/4 = 5.5,
    # cheaper than any policy that reaches 36.
    best = search(table, Target(max_drop=25), grid=8)
    assert best.accuracy >= 50.0
    assert best.visual_tokens_processed == pytest.approx(5.5)
    assert best.policy.ladder == (1, 9)
    assert search(table, Target(max_drop=0), grid=8).accuracy == pytest.approx(75.0)
    assert search(table, Target(max_tokens=1), grid=8).policy.ladder == (1,)


def test_search_is_deterministic_whatever_the_input_order() -> None:
    rng = random.Random(0)
    ids = [f"q{i}" for i in range(200)]
    data = {s: {} for s in (1, 9, 36)}
    for i in ids:
        for k, s in enumerate((1, 9, 36)):
            p = rng.random()
            data[s][i] = (float(rng.random() < 0.4 + 0.2 * k + 0.3 * p), round(p, 4), s)
    first = search(build_table(data), Target(max_drop=2), grid=6)
    shuffled = {s: dict(sorted(data[s].items(), key=lambda _: rng.random())) for s in reversed(list(data))}
    second = search(build_table(shuffled), Target(max_drop=2), grid=6)
    assert first == second
    assert first.policy.thresholds[-1] == 0.0


def test_a_target_no_policy_meets_is_an_error() -> None:
    table = build_table(HAND)
    with pytest.raises(CalibrationError, match="no policy over the ladder"):
        search(table, Target(max_tokens=0.5), grid=4)
    with pytest.raises(CalibrationError, match="exactly one target"):
        Target(max_drop=1, max_tokens=10)
    with pytest.raises(CalibrationError, match="--max-drop must be a number >= 0"):
        Target(max_drop=-1)


def test_tables_must_cover_the_same_samples() -> None:
    with pytest.raises(CalibrationError, match=r"scales 1 and 9 cover different samples \(1 differ, e.g. 'x'\)"):
        build_table({1: {"a": (1.0, 0.5, 1), "x": (1.0, 0.5, 1)}, 9: {"a": (1.0, 0.5, 9)}})


def write_results(folder: Path, data: dict[int, dict[str, tuple[float, float, int]]]) -> Path:
    """A benchmark's results folder as the harness and a scorer leave it: per scale, answers.jsonl + per_sample.json."""
    for scale, rows in data.items():
        sub = folder / str(scale)
        sub.mkdir(parents=True)
        lines = [
            {
                "question_id": qid,
                "text": "x",
                "metadata": {"matryoshka_vis_token_scale": scale, "p_first": p, "visual_tokens": t},
            }
            for qid, (_, p, t) in rows.items()
        ]
        (sub / "answers.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        (sub / "per_sample.json").write_text(json.dumps({qid: bool(c) for qid, (c, _, _) in rows.items()}))
    (folder / "auto").mkdir()  # the adaptive budget's own results are not calibration input
    return folder


def test_command_writes_the_policy_file_twice_the_same(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = write_results(tmp_path / "shapes", HAND)
    out = tmp_path / "policy.json"
    argv = ["--results-dir", str(results), "--max-drop", "25", "--grid", "8", "--output", str(out)]
    best = calibrate_scale.main(argv)
    first = out.read_text()
    stored = read_policy_file(out)
    assert stored.policy == best.policy
    assert stored.calibration["samples"] == 4 and stored.calibration["policy"]["visual_tokens_processed"] == 5.5
    assert "policy: 1 (>" in capsys.readouterr().out
    calibrate_scale.main(argv)
    assert out.read_text() == first
    model = tmp_path / "model"
    model.mkdir()
    calibrate_scale.main(
        ["--results-dir", str(results), "--max-tokens", "10", "--grid", "8", "--model-path", str(model)]
    )
    assert read_policy_file(model / "matryoshka_policy.json").policy.ladder[0] == 1


def test_bad_results_are_named(tmp_path: Path) -> None:
    results = write_results(tmp_path / "r", HAND)
    answers = results / "9" / "answers.jsonl"
    answers.write_text(answers.read_text().replace('"p_first": 0.8, ', ""))
    with pytest.raises(CalibrationError, match=r"9/answers.jsonl:2: no question_id or no metadata.p_first"):
        calibrate_scale.read_results(results)
    (results / "9" / "answers.jsonl").unlink()
    with pytest.raises(CalibrationError, match=r"9/answers.jsonl: not found"):
        calibrate_scale.read_results(results)
    other = write_results(tmp_path / "o", {1: HAND[1]})
    (other / "1" / "per_sample.json").write_text(json.dumps({"a": True, "zz": False}))
    with pytest.raises(CalibrationError, match=r"1 scored samples have no line .* \(e.g. 'zz'\)"):
        calibrate_scale.read_results(other)
    with pytest.raises(CalibrationError, match="results folder not found"):
        calibrate_scale.read_results(tmp_path / "missing")
