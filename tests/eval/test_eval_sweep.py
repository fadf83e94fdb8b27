"""The scale sweep: table, CSV and plot of scores per scale, and the oracle analysis."""

from __future__ import annotations

import csv
import json

import pytest

from llava.eval import sweep


def test_oracle_picks_the_fewest_tokens_that_answer_correctly() -> None:
    correct_by_scale = {
        1: {"a": True, "b": False, "c": False, "d": False, "e": False},
        9: {"a": True, "b": True, "c": False, "d": False, "e": False},
        36: {"a": True, "b": True, "c": False, "d": False, "e": True},
        576: {"a": True, "b": True, "c": True, "d": False, "e": False},
    }
    result = sweep.oracle(correct_by_scale)
    # a: 1 token suffices; b: 9; c: only 576; d: wrong everywhere, counts at the smallest (1); e: only 36.
    assert result.tokens == {"a": 1, "b": 9, "c": 576, "d": 1, "e": 36}
    assert result.accuracy == pytest.approx(4 / 5)
    assert result.mean_tokens == pytest.approx((1 + 9 + 576 + 1 + 36) / 5)  # 124.6
    assert result.samples_per_scale == {1: 2, 9: 1, 36: 1, 576: 1}


def test_oracle_with_soft_vqa_scores() -> None:
    # Best score per sample, at the fewest tokens reaching it: x 0.6 at 9, y 1.0 at 144.
    result = sweep.oracle({9: {"x": 0.6, "y": 0.3}, 144: {"x": 0.6, "y": 1.0}, 576: {"x": 0.3, "y": 1.0}})
    assert result.tokens == {"x": 9, "y": 144}
    assert result.accuracy == pytest.approx((0.6 + 1.0) / 2)


def test_oracle_needs_the_same_samples_at_every_scale() -> None:
    with pytest.raises(ValueError, match=r"scales 1 and 576 cover different samples \(1 differ, e.g. 'b'\)"):
        sweep.oracle({1: {"a": True}, 576: {"a": True, "b": False}})


def _write_results(root, benchmark: str, scale: int, score: float, per_sample: dict | None = None) -> None:
    folder = root / benchmark / str(scale)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"benchmark": benchmark, "score": score}))
    if per_sample is not None:
        (folder / "per_sample.json").write_text(json.dumps(per_sample))


def test_sweep_writes_table_csv_plot_and_oracle(tmp_path, capsys) -> None:
    results = tmp_path / "results"
    for scale, score, per_sample in [
        (576, 60.0, {"q1": True, "q2": True, "q3": False}),
        (144, 58.25, {"q1": True, "q2": False, "q3": False}),
        (1, 40.0, {"q1": False, "q2": False, "q3": True}),
    ]:
        _write_results(results, "textvqa", scale, score, per_sample)
    _write_results(results, "mme", 576, 1500.0)
    _write_results(results, "mme", 36, 1400.5)
    out = tmp_path / "summary"
    sweep.main(["--results-dir", str(results), "--out-dir", str(out)])

    assert (out / "sweep.md").read_text() == (
        "| benchmark | 576 | 144 | 36 | 1 |\n"
        "|---|---:|---:|---:|---:|\n"
        "| mme | 1500.0 | – | 1400.5 | – |\n"
        "| textvqa | 60.0 | 58.2 | – | 40.0 |\n"
    )
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["benchmark", "576", "144", "36", "1"],
        ["mme", "1500.0", "", "1400.5", ""],
        ["textvqa", "60.0", "58.25", "", "40.0"],
    ]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(out / "oracle.csv", newline="") as f:
        (oracle_row,) = list(csv.DictReader(f))
    # q1 right at 144, q2 only at 576, q3 at 1: all three answerable; tokens (144 + 576 + 1) / 3.
    assert oracle_row["benchmark"] == "textvqa"
    assert float(oracle_row["oracle_accuracy"]) == pytest.approx(100.0)
    assert float(oracle_row["accuracy_at_largest"]) == pytest.approx(200 / 3)
    assert float(oracle_row["mean_oracle_tokens"]) == pytest.approx((144 + 576 + 1) / 3)
    assert "| textvqa | 3 | 576 144 1 | 66.7 | 100.0 | 240.3 |" in capsys.readouterr().out


def test_sweep_names_a_bad_results_file(tmp_path) -> None:
    folder = tmp_path / "pope" / "9"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"score": "high"}))
    with pytest.raises(sweep.SweepError, match=r"pope/9/results.json: 'score' must be a finite number, got 'high'"):
        sweep.main(["--results-dir", str(tmp_path)])
