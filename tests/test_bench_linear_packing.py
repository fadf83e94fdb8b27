"""Smoke run of benchmarks/bench_linear_packing.py: one cell per shape and row count, and a clear
error for a malformed shape."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llava.model.cpu_packing import cpu_packing_available

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_linear_packing.py"

pytestmark = pytest.mark.skipif(not cpu_packing_available(), reason="torch built without oneDNN")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_linear_packing", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_shape_and_row_count_is_timed(bench, tmp_path):
    out = tmp_path / "packing.json"
    results = bench.main(["--shapes", "16x32,64x8", "--rows", "1,3", "--calls", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    cells = {(r["in_features"], r["out_features"], r["rows"]) for r in results["rows"]}
    assert cells == {(16, 32, 1), (16, 32, 3), (64, 8, 1), (64, 8, 3)}
    for r in results["rows"]:
        assert r["weights"] == r["in_features"] * r["out_features"]
        assert r["speedup"] == pytest.approx(r["plain_us"] / r["packed_us"])


def test_a_malformed_shape_is_a_clear_error(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "16by32"])
    assert "--shapes takes e.g. 512x1024" in capsys.readouterr().err
