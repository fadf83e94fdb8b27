"""Check lmms-eval's M3-Shapes scores against our own harness's, budget by budget; exit 1 on any difference.

    python scripts/lmms_eval/compare_shapes.py --data-dir playground/data/lmms_eval/m3_shapes \\
        --harness HARNESS_DIR/shapes_results.json --lmms-eval-output OUTPUT --scales 576,1

Reads, for each budget, what `scripts/lmms_eval/eval.sh ... m3_shapes SCALES OUTPUT` wrote under
OUTPUT/s<budget> (the newest results file and its sample log) and what `python -m llava.eval.shapes_demo
--scales SCALES --num-images N` wrote to `shapes_results.json` for the same N held-out images. It
checks that lmms-eval ran the plugin at that budget on every question, scores lmms-eval's answers with
`llava.data.shapes.score` (overall, by difficulty, by question type) and requires that breakdown to
equal the harness's, and lmms-eval's own aggregated accuracy to equal its overall accuracy.
lmms-eval exits 0 even when a run fails, so a missing or partial output is reported here as a failure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.data import shapes

TASK = "m3_shapes"


def read_run(output: Path, scale: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The newest aggregated results of the run at `scale` and its samples (one line per question)."""
    folder = output / f"s{scale}"
    results_files = sorted(folder.glob("*/*_results.json"), key=lambda p: p.name)
    if not results_files:
        raise FileNotFoundError(f"no lmms-eval results under {folder} (lmms-eval exits 0 on errors: read its log)")
    results_file = results_files[-1]
    date_id = results_file.name.removesuffix("_results.json")
    samples_file = results_file.with_name(f"{date_id}_samples_{TASK}.jsonl")
    if not samples_file.exists():
        raise FileNotFoundError(f"{samples_file} is missing: run lmms-eval with --log_samples")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    samples = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return results, samples


def model_args(results: dict[str, Any]) -> dict[str, str]:
    """lmms-eval's `--model_args` of a run, as a dict."""
    pairs = [item.split("=", 1) for item in results["config"]["model_args"].split(",") if item]
    return {key: value for key, value in pairs}


def compare_run(
    results: dict[str, Any], samples: Sequence[dict[str, Any]], records: Sequence[dict], harness: dict, scale: int
) -> tuple[float, list[str]]:
    """lmms-eval's accuracy at `scale` and every way it differs from the harness's (empty when equal)."""
    problems = []
    if results["config"]["model"] != "llava_m3":
        problems.append(f"model is {results['config']['model']!r}, not llava_m3")
    if model_args(results).get("matryoshka_vis_token_scale") != str(scale):
        problems.append(f"model_args {results['config']['model_args']!r} do not ask for {scale} visual tokens")
    if sorted(sample["doc_id"] for sample in samples) != list(range(len(records))):
        problems.append(f"{len(samples)} answers logged for {len(records)} questions")
    predictions = {records[s["doc_id"]]["id"]: s["filtered_resps"] for s in samples if s["doc_id"] < len(records)}
    ours = shapes.score(records, predictions)
    if ours != harness:
        problems.append(f"lmms-eval's answers score {json.dumps(ours)}, the harness's {json.dumps(harness)}")
    accuracy = results["results"][TASK]["accuracy,none"]
    if not math.isclose(accuracy, ours["accuracy"], rel_tol=1e-12):
        problems.append(f"lmms-eval aggregated {accuracy}, its answers score {ours['accuracy']}")
    return accuracy, problems


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="lmms-eval's M3-Shapes scores against llava.eval.shapes_demo's.")
    parser.add_argument("--data-dir", type=Path, required=True, help="the folder shapes_task wrote (test.json)")
    parser.add_argument("--harness", type=Path, required=True, help="shapes_results.json of llava.eval.shapes_demo")
    parser.add_argument("--lmms-eval-output", type=Path, required=True, help="OUTPUT of scripts/lmms_eval/eval.sh")
    parser.add_argument("--scales", required=True, help="budgets to compare, e.g. 576,1")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    records = json.loads((args.data_dir / "test.json").read_text(encoding="utf-8"))
    harness = json.loads(args.harness.read_text(encoding="utf-8"))["results"]
    failed = False
    print(f"M3-Shapes, {len(records)} questions: accuracy (%) by visual tokens")
    print("| budget | lmms-eval | harness |\n|---:|---:|---:|")
    for scale in [int(s) for s in args.scales.split(",")]:
        if str(scale) not in harness:
            print(f"the harness did not run at {scale} visual tokens ({args.harness})", file=sys.stderr)
            return 1
        try:
            accuracy, problems = compare_run(
                *read_run(args.lmms_eval_output, scale), records, harness[str(scale)], scale
            )
        except (FileNotFoundError, KeyError, json.JSONDecodeError) as e:
            accuracy, problems = math.nan, [f"unreadable lmms-eval output: {type(e).__name__}: {e}"]
        print(f"| {scale} | {100 * accuracy:.1f} | {100 * harness[str(scale)]['accuracy']:.1f} |")
        for problem in problems:
            print(f"budget {scale}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
