"""Smoke run of benchmarks/bench_video.py on the tiny preset: it runs, writes its JSON, and the exact
(non-timing) quantities hold: the grid's size and the visual tokens each budget costs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # bench_video imports its timer from bench_inference, as when run as a script
    try:
        spec = importlib.util.spec_from_file_location("bench_video", BENCHMARKS / "bench_video.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.mark.parametrize(
    ("aspect", "tokens"), [("pad", {576: 576, 9: 9}), ("anyres", {576: 2928, 9: 51})]
)  # a square grid: 2x2 crops
def test_tiny_run(bench, tmp_path: Path, aspect: str, tokens: dict[int, int]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--aspect", aspect, "--size", "96x64", "--seconds", "4", "--fps", "25"]
    results = bench.main(argv + ["--repeats", "1", "--new-tokens", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    decoding = results["decoding"]
    assert decoding["video"]["frames"] == 100 and decoding["grid_size"] == [2 * 96, 3 * 64]
    assert decoding["decode_s"] > 0 and decoding["decode_and_grid_s"] > 0
    assert {row["scale"]: row["visual_tokens"] for row in results["rows"]} == tokens
    assert all(row["ttft_s"] > 0 and row["answer_s"] > 0 for row in results["rows"])
