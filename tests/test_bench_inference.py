"""Smoke run of benchmarks/bench_inference.py on the tiny preset: it runs, and the exact (non-timing)
quantities it reports hold: KV-cache bytes scale with the prompt length at each budget."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inference.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_inference", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("aspect", ["pad", "anyres"])
def test_tiny_run_reports_every_budget_and_exact_cache_sizes(bench, aspect, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--aspects", aspect, "--batch-sizes", "2", "--scales", "576,9,1"]
    results = bench.main(argv + ["--repeats", "1", "--new-tokens", "2", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == results["rows"]
    rows = {r["scale"]: r for r in results["rows"]}
    assert sorted(rows) == [1, 9, 576]
    per_token = rows[576]["kv_cache_bytes"] / rows[576]["prompt_tokens"]
    for row in rows.values():
        assert row["kv_cache_bytes"] == per_token * row["prompt_tokens"]
        assert row["ttft_s"] > 0 and row["prefill_peak_bytes"] > 0
        assert row["decode_tok_s"] > 0  # timed inside one call: never n/a with 2 or more new tokens
    (ratios,) = results["ratios"]
    assert ratios["kv_ratio_1_vs_576"] == pytest.approx(ratios["prompt_ratio_1_vs_576"])
    assert results["comparisons"][0]["hf_ttft_s_at_576"] > 0


def test_prepacked_rows_time_the_same_model_after_packing(bench):
    argv = ["--preset", "tiny", "--aspects", "pad", "--batch-sizes", "1", "--scales", "576,1"]
    # The tiny preset's layers are all below PACK_MIN_WEIGHTS: pack them all, to time packed layers.
    results = bench.main(argv + ["--repeats", "1", "--new-tokens", "2", "--cpu-weight-prepack", "--pack-every-layer"])
    (comparison,) = results["prepacked_comparisons"]
    assert comparison["packed_layers"] > 0 and comparison["hf_ttft_s_at_576"] > 0
    assert results["prepacked_ratios"][0]["kv_ratio_1_vs_576"] == pytest.approx(
        results["ratios"][0]["kv_ratio_1_vs_576"]
    )
    eager = {r["scale"]: r for r in results["rows"]}
    packed = {r["scale"]: r for r in results["prepacked"]}
    assert sorted(packed) == [1, 576]
    for scale, row in packed.items():
        # Packing changes how the weights are stored, not what the prompt or its cache is.
        assert row["kv_cache_bytes"] == eager[scale]["kv_cache_bytes"]
        assert row["prompt_tokens"] == eager[scale]["prompt_tokens"]
        assert row["ttft_speedup"] == pytest.approx(eager[scale]["ttft_s"] / row["ttft_s"])
