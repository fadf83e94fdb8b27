"""Plain `nn.Linear` against `PackedLinear` (oneDNN-packed weight) per layer shape and row count, CPU.

The measurement behind `llava.model.cpu_packing.PACK_MIN_WEIGHTS`: the smallest weight that
`prepare_for_inference` packs by default on the CPU.

    python benchmarks/bench_linear_packing.py --out linear_packing.json

Prints a markdown table (plain / packed microseconds per call and the speed-up); writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import torch
from torch import nn

from llava.model.cpu_packing import PACK_MIN_WEIGHTS, PackedLinear, cpu_packing_available

SHAPES = "256x256,512x512,1536x256,512x1024,768x768,1024x1024,1024x4096,1536x1536,1536x4096"
ROWS = "1,8,41,608"


def fastest_call(fn, calls: int) -> float:
    """Fastest of `calls` calls after three warm-up calls (noise only ever adds time)."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    rows_out = []
    with torch.inference_mode():
        for in_features, out_features in args.shapes:
            plain = nn.Linear(in_features, out_features)
            packed = PackedLinear(plain)
            for rows in args.rows:
                x = torch.randn(rows, in_features)
                t_plain = fastest_call(lambda: plain(x), args.calls)
                t_packed = fastest_call(lambda: packed(x), args.calls)
                rows_out.append(
                    {
                        "in_features": in_features,
                        "out_features": out_features,
                        "weights": in_features * out_features,
                        "rows": rows,
                        "plain_us": t_plain * 1e6,
                        "packed_us": t_packed * 1e6,
                        "speedup": t_plain / t_packed,
                    }
                )
            print(f"{in_features}x{out_features} done", flush=True)
    return {
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "pack_min_weights": PACK_MIN_WEIGHTS,
        "rows": rows_out,
    }


def markdown(results: dict[str, Any], row_counts: list[int]) -> str:
    lines = [
        f"{results['machine']}, {results['threads']} threads, torch {results['torch']}; "
        f"plain / packed µs per call (speed-up); packed by default from {results['pack_min_weights']} weights",
        "",
        "| in × out | weights | " + " | ".join(f"{r} rows" for r in row_counts) + " |",
        "|---|---|" + "---|" * len(row_counts),
    ]
    by_shape: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in results["rows"]:
        by_shape.setdefault((r["in_features"], r["out_features"]), []).append(r)
    for (i, o), cells in by_shape.items():
        body = " | ".join(f"{c['plain_us']:.0f} / {c['packed_us']:.0f} ({c['speedup']:.2f}×)" for c in cells)
        lines.append(f"| {i} × {o} | {i * o} | {body} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=SHAPES, help="comma-separated in_featuresxout_features")
    parser.add_argument("--rows", default=ROWS, help="comma-separated row counts (tokens × batch)")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per cell; the fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--out", default=None, help="write the JSON results here")
    args = parser.parse_args(argv)
    if not cpu_packing_available():
        parser.error("this torch build has no oneDNN (torch.backends.mkldnn): nothing to compare")
    try:
        args.shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
        args.rows = [int(r) for r in args.rows.split(",")]
    except ValueError as error:
        parser.error(f"--shapes takes e.g. 512x1024,1536x4096 and --rows e.g. 1,8,41: {error}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args)
    print(markdown(results, args.rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
