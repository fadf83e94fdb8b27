"""Accuracy across visual-token scales: one table, one plot, and the M3 paper's oracle analysis.

    python -m llava.eval.sweep --results-dir eval_results [--out-dir eval_results/summary]

The results folder holds one subfolder per benchmark and, inside it, one per scale (the number
of visual tokens), each with what the scorers write via `--output` / `--per-sample`:

    eval_results/textvqa/576/results.json     {"score": 58.2, ...}   headline number, any unit
    eval_results/textvqa/576/per_sample.json  {"<question id>": true | false | 0.6, ...}   optional
    eval_results/textvqa/144/...

It writes `sweep.md` and `sweep.csv` (rows: benchmarks, columns: scales, largest first),
`sweep.png` (score against visual tokens on a log axis, one panel per benchmark), and, for the
benchmarks with per-sample files, `oracle.md` / `oracle.csv` over the scales that have one.

The oracle (M3 paper, Section "Oracle"): for each sample, the fewest visual tokens that still
answer it correctly; a sample answered wrongly at every scale counts at the smallest scale. The
oracle accuracy is the fraction of samples some scale gets right, and the mean oracle tokens say
how few tokens would suffice if the right scale were known per sample. Soft per-sample scores
(VQA accuracy) work the same way: a sample takes its best score, at the fewest tokens reaching it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path

from llava.optional import optional_dependency

with optional_dependency():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

Scores = dict[str, dict[int, float]]
"""benchmark -> scale -> headline score."""


class SweepError(ValueError):
    """Bad sweep input; the message names the file and the value."""


@dataclass(frozen=True)
class OracleResult:
    """Oracle accuracy (a fraction in [0, 1]) and the tokens it needs per sample."""

    accuracy: float
    mean_tokens: float
    tokens: dict[Hashable, int]
    num_samples: int
    samples_per_scale: dict[int, int]


def oracle(correct_by_scale: Mapping[int, Mapping[Hashable, bool | float]]) -> OracleResult:
    """Per sample, the fewest tokens that answer it as well as any scale does.

    `correct_by_scale` maps a scale (visual tokens) to per-sample correctness (bool, or a score in
    [0, 1]); every scale must cover the same samples. A sample wrong at every scale counts at
    the smallest scale, so wrong samples cost the fewest tokens rather than inflating the mean.
    """
    if not correct_by_scale:
        raise ValueError("oracle needs at least one scale")
    scales = sorted(correct_by_scale)
    samples = set(correct_by_scale[scales[0]])
    for scale in scales[1:]:
        difference = samples.symmetric_difference(correct_by_scale[scale])
        if difference:
            raise ValueError(
                f"scales {scales[0]} and {scale} cover different samples ({len(difference)} differ, "
                f"e.g. {sorted(map(str, difference))[0]!r})"
            )
    if not samples:
        raise ValueError("oracle needs at least one sample")
    tokens: dict[Hashable, int] = {}
    total = 0.0
    for sample in samples:
        values = [float(correct_by_scale[scale][sample]) for scale in scales]
        best = max(values)
        tokens[sample] = scales[values.index(best)]  # the first (smallest) scale reaching the best
        total += best
    return OracleResult(
        accuracy=total / len(samples),
        mean_tokens=sum(tokens.values()) / len(samples),
        tokens=tokens,
        num_samples=len(samples),
        samples_per_scale={scale: sum(t == scale for t in tokens.values()) for scale in scales},
    )


def _scale_folders(results_dir: Path) -> list[tuple[str, int, Path]]:
    """(benchmark, scale, folder) for every `<benchmark>/<scale>/` folder, sorted."""
    if not results_dir.is_dir():
        raise SweepError(f"{results_dir}: results folder not found")
    found = []
    for benchmark in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        for folder in sorted(p for p in benchmark.iterdir() if p.is_dir()):
            if not folder.name.isdigit() or int(folder.name) < 1:
                logger.warning("skipping %s: not a scale folder (a positive token count)", folder)
                continue
            found.append((benchmark.name, int(folder.name), folder))
    return found


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def collect_scores(results_dir: str | Path) -> Scores:
    """Headline `score` of every `<benchmark>/<scale>/results.json`."""
    scores: Scores = {}
    for benchmark, scale, folder in _scale_folders(Path(results_dir)):
        path = folder / "results.json"
        if not path.is_file():
            logger.warning("skipping %s: no results.json", folder)
            continue
        results = _read_json(path)
        value = results.get("score") if isinstance(results, dict) else None
        if value is None:
            raise SweepError(f"{path}: no numeric 'score' (got {value!r}); is it a submission-only benchmark?")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SweepError(f"{path}: 'score' must be a finite number, got {value!r}")
        scores.setdefault(benchmark, {})[scale] = float(value)
    return scores


def collect_per_sample(results_dir: str | Path) -> dict[str, dict[int, dict[str, bool | float]]]:
    """Per-sample correctness of every `<benchmark>/<scale>/per_sample.json` that exists."""
    found: dict[str, dict[int, dict[str, bool | float]]] = {}
    for benchmark, scale, folder in _scale_folders(Path(results_dir)):
        path = folder / "per_sample.json"
        if not path.is_file():
            continue
        data = _read_json(path)
        if not isinstance(data, dict):
            raise SweepError(f"{path}: expected {{sample id: correct}}, got {type(data).__name__}")
        for sample, value in data.items():
            if not isinstance(value, bool | int | float) or not 0 <= value <= 1:
                raise SweepError(f"{path}: sample {sample!r} has correctness {value!r}; expected a bool or [0, 1]")
        found.setdefault(benchmark, {})[scale] = data
    return found


def all_scales(scores: Scores) -> list[int]:
    """Every scale present, largest first (576, 144, 36, 9, 1)."""
    return sorted({scale for by_scale in scores.values() for scale in by_scale}, reverse=True)


def markdown_table(scores: Scores) -> str:
    scales = all_scales(scores)
    lines = [
        "| benchmark | " + " | ".join(str(s) for s in scales) + " |",
        "|---|" + "---:|" * len(scales),
    ]
    for benchmark, by_scale in sorted(scores.items()):
        cells = [f"{by_scale[s]:.1f}" if s in by_scale else "–" for s in scales]
        lines.append(f"| {benchmark} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(scores: Scores, path: str | Path) -> None:
    scales = all_scales(scores)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["benchmark", *scales])
        for benchmark, by_scale in sorted(scores.items()):
            writer.writerow([benchmark, *(by_scale.get(s, "") for s in scales)])


def plot(scores: Scores, path: str | Path) -> None:
    """Score against visual tokens (log x), one panel per benchmark since units differ (MME vs %)."""
    benchmarks = sorted(scores)
    columns = min(4, len(benchmarks))
    rows = math.ceil(len(benchmarks) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, benchmark in zip(axes, benchmarks, strict=False):
        scales = sorted(scores[benchmark])
        ax.plot(scales, [scores[benchmark][s] for s in scales], marker="o")
        ax.set_xscale("log")
        ax.set_xticks(scales, [str(s) for s in scales])
        ax.minorticks_off()
        ax.set_title(benchmark)
        ax.set_xlabel("visual tokens")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(benchmarks) :]:
        ax.set_visible(False)
    figure.savefig(path, dpi=120)


def oracle_table(per_sample: Mapping[str, Mapping[int, Mapping[str, bool | float]]]) -> list[dict[str, object]]:
    """One row per benchmark: accuracy at the largest scale, oracle accuracy (percent), mean tokens."""
    rows = []
    for benchmark, by_scale in sorted(per_sample.items()):
        try:
            result = oracle(by_scale)
        except ValueError as e:
            raise SweepError(f"{benchmark}: {e}") from None
        largest = by_scale[max(by_scale)]
        rows.append(
            {
                "benchmark": benchmark,
                "samples": result.num_samples,
                "scales": " ".join(str(s) for s in sorted(by_scale, reverse=True)),
                "accuracy_at_largest": 100.0 * sum(map(float, largest.values())) / len(largest),
                "oracle_accuracy": 100.0 * result.accuracy,
                "mean_oracle_tokens": result.mean_tokens,
            }
        )
    return rows


def write_oracle(rows: list[dict[str, object]], out_dir: Path) -> str:
    header = ["benchmark", "samples", "scales", "accuracy_at_largest", "oracle_accuracy", "mean_oracle_tokens"]
    with open(out_dir / "oracle.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---|---:|---:|---:|"]
    for row in rows:
        cells = [f"{row[h]:.1f}" if isinstance(row[h], float) else str(row[h]) for h in header]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (out_dir / "oracle.md").write_text(table, encoding="utf-8")
    return table


def main(argv: list[str] | None = None) -> Scores:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", required=True, help="folder of <benchmark>/<scale>/results.json")
    parser.add_argument("--out-dir", help="where to write sweep.* and oracle.* (default: the results folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    scores = collect_scores(args.results_dir)
    if not scores:
        raise SweepError(f"{args.results_dir}: no <benchmark>/<scale>/results.json found")
    out_dir = Path(args.out_dir or args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(scores)
    (out_dir / "sweep.md").write_text(table, encoding="utf-8")
    write_csv(scores, out_dir / "sweep.csv")
    plot(scores, out_dir / "sweep.png")
    print(table)
    per_sample = collect_per_sample(args.results_dir)
    if per_sample:
        print(write_oracle(oracle_table(per_sample), out_dir))
    return scores


if __name__ == "__main__":
    try:
        main()
    except SweepError as e:
        raise SystemExit(f"error: {e}") from None
