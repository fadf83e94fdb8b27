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

The adaptive budget beside them: a folder `<benchmark>/auto/` holds the scores of the answers given
with `--matryoshka_vis_token_scale auto`. When a scale's (or auto's) folder also holds the harness's
answers file as `answers.jsonl`, its lines say what each answer cost (visual tokens of the answering
budget and over every rung tried, wall time), and the sweep writes `budgets.md` / `budgets.csv` (score,
mean visual tokens answering and processed, mean seconds per question for every fixed scale, auto and
the oracle) and `budgets_tokens.png` / `budgets_time.png` (score against processed visual tokens and
against wall time). Where every fixed scale has answers with p_first and per-sample scores, the tokens
plot also shows the policy curve: one threshold for every rung, swept from 0 to 1, scored exactly from
the fixed scales' answers (`llava.eval.calibrate_scale.threshold_curve`).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llava.optional import optional_dependency

with optional_dependency():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

from llava.eval.calibrate_scale import CalibrationError, PolicyOutcome, read_results, threshold_curve
from llava.eval.scoring.common import ScoringError, read_jsonl

logger = logging.getLogger(__name__)

Scores = dict[str, dict[int, float]]
"""benchmark -> scale -> headline score."""


AUTO_FOLDER = "auto"
"""The results folder of the adaptive budget (`--matryoshka_vis_token_scale auto`)."""


class SweepError(ScoringError):
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


def _scale_folders(results_dir: Path, with_auto: bool = False) -> list[tuple[str, int | str, Path]]:
    """(benchmark, scale, folder) for every `<benchmark>/<scale>/` folder, sorted; with `with_auto` also
    (benchmark, "auto", folder) for the adaptive budget's folders."""
    if not results_dir.is_dir():
        raise SweepError(f"{results_dir}: results folder not found")
    found: list[tuple[str, int | str, Path]] = []
    for benchmark in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        for folder in sorted(p for p in benchmark.iterdir() if p.is_dir()):
            if folder.name == AUTO_FOLDER:
                if with_auto:
                    found.append((benchmark.name, AUTO_FOLDER, folder))
                continue
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


def collect_scores(results_dir: str | Path, with_auto: bool = False) -> Scores:
    """Headline `score` of every `<benchmark>/<scale>/results.json` (and `<benchmark>/auto/` with `with_auto`)."""
    scores: Scores = {}
    for benchmark, scale, folder in _scale_folders(Path(results_dir), with_auto):
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


# -- what each budget costs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """Means over an answers file's lines: visual tokens of the answering budget and over every rung tried,
    wall time per question (None when the lines do not say)."""

    visual_tokens: float
    visual_tokens_processed: float
    seconds: float | None


def read_cost(path: Path) -> Cost:
    """The cost an answers file's metadata records (`llava.eval.harness.answer_metadata`)."""
    tokens, processed, seconds = [], [], []
    for number, line in read_jsonl(path, SweepError):
        metadata = line.get("metadata") or {}
        if not isinstance(metadata.get("visual_tokens"), int | float):
            raise SweepError(
                f"{path}:{number}: no metadata.visual_tokens; answer with llava.eval's harness, which records it"
            )
        tokens.append(float(metadata["visual_tokens"]))
        processed.append(float(metadata.get("visual_tokens_processed", metadata["visual_tokens"])))
        if isinstance(metadata.get("seconds"), int | float):
            seconds.append(float(metadata["seconds"]))
    if not tokens:
        raise SweepError(f"{path}: no answer lines")
    mean_seconds = sum(seconds) / len(seconds) if len(seconds) == len(tokens) else None
    return Cost(sum(tokens) / len(tokens), sum(processed) / len(processed), mean_seconds)


def collect_costs(results_dir: str | Path) -> dict[str, dict[int | str, Cost]]:
    """Cost of every `<benchmark>/<scale or auto>/answers.jsonl` that exists."""
    costs: dict[str, dict[int | str, Cost]] = {}
    for benchmark, label, folder in _scale_folders(Path(results_dir), with_auto=True):
        if (folder / "answers.jsonl").is_file():
            costs.setdefault(benchmark, {})[label] = read_cost(folder / "answers.jsonl")
    return costs


@dataclass(frozen=True)
class BudgetRow:
    """One way of choosing the budget on one benchmark: what it scores and what it costs."""

    benchmark: str
    budget: str
    """A fixed scale ("576"), "auto" (the calibrated policy) or "oracle" (the best scale per sample, known afterwards)."""
    score: float
    visual_tokens: float
    visual_tokens_processed: float
    seconds: float | None


def budget_rows(
    scores: Mapping[str, Mapping[int | str, float]],
    costs: Mapping[str, Mapping[int | str, Cost]],
    per_sample: Mapping[str, Mapping[int, Mapping[str, bool | float]]],
) -> list[BudgetRow]:
    """Rows for every budget with both a score and a cost, largest scale first, then auto, then the oracle
    (its score is the per-sample accuracy in percent; its tokens are the oracle scales' mean)."""
    rows = []
    for benchmark in sorted(costs):
        labels = sorted((k for k in costs[benchmark] if isinstance(k, int)), reverse=True)
        labels += [AUTO_FOLDER] if AUTO_FOLDER in costs[benchmark] else []
        for label in labels:
            if label in scores.get(benchmark, {}):
                cost = costs[benchmark][label]
                score = scores[benchmark][label]
                rows.append(
                    BudgetRow(
                        benchmark, str(label), score, cost.visual_tokens, cost.visual_tokens_processed, cost.seconds
                    )
                )
        if benchmark in per_sample:
            result = oracle(per_sample[benchmark])
            rows.append(
                BudgetRow(benchmark, "oracle", 100.0 * result.accuracy, result.mean_tokens, result.mean_tokens, None)
            )
    return rows


def write_budgets(rows: list[BudgetRow], out_dir: Path) -> str:
    header = ["benchmark", "budget", "score", "visual_tokens", "visual_tokens_processed", "seconds"]
    with open(out_dir / "budgets.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[getattr(row, h) if getattr(row, h) is not None else "" for h in header] for row in rows])
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        seconds = "–" if row.seconds is None else f"{row.seconds:.4f}"
        cells = [row.benchmark, row.budget, f"{row.score:.2f}", f"{row.visual_tokens:.1f}"]
        lines.append("| " + " | ".join([*cells, f"{row.visual_tokens_processed:.1f}", seconds]) + " |")
    table = "\n".join(lines) + "\n"
    (out_dir / "budgets.md").write_text(table, encoding="utf-8")
    return table


def policy_curves(results_dir: str | Path, benchmarks: Sequence[str]) -> dict[str, list[PolicyOutcome]]:
    """The one-threshold policy curve of each benchmark whose fixed scales all have answers with p_first and
    per-sample scores; others are skipped (logged)."""
    curves = {}
    for benchmark in benchmarks:
        try:
            table = read_results(Path(results_dir) / benchmark)
        except CalibrationError as e:
            logger.info("%s: no policy curve (%s)", benchmark, e)
            continue
        curves[benchmark] = threshold_curve(table, table.scales)
    return curves


def plot_budgets(
    rows: list[BudgetRow], curves: Mapping[str, list[PolicyOutcome]], path: str | Path, x: str = "tokens"
) -> None:
    """Score against mean processed visual tokens (`x="tokens"`, log axis, with the policy curves) or against
    mean seconds per question (`x="seconds"`): fixed scales as a line, auto as a star, the oracle as a diamond."""
    benchmarks = sorted({row.benchmark for row in rows})
    figure = Figure(figsize=(4.2 * len(benchmarks), 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    for ax, benchmark in zip(figure.subplots(1, len(benchmarks), squeeze=False).ravel(), benchmarks):
        mine = [row for row in rows if row.benchmark == benchmark]
        value = (lambda r: r.visual_tokens_processed) if x == "tokens" else (lambda r: r.seconds)
        fixed = sorted((r for r in mine if r.budget.isdigit() and value(r) is not None), key=value)
        ax.plot([value(r) for r in fixed], [r.score for r in fixed], marker="o", label="fixed budgets")
        for r in fixed:
            ax.annotate(r.budget, (value(r), r.score), textcoords="offset points", xytext=(3, -10), fontsize=7)
        if x == "tokens" and benchmark in curves:
            curve = curves[benchmark]
            ax.plot(
                [o.visual_tokens_processed for o in curve],
                [o.accuracy for o in curve],
                linewidth=1,
                alpha=0.7,
                label="policy, one threshold",
            )
        for r, marker, name in [(r, "*", "auto") for r in mine if r.budget == AUTO_FOLDER] + [
            (r, "D", "oracle") for r in mine if r.budget == "oracle" and x == "tokens"
        ]:
            if value(r) is not None:
                ax.plot(
                    [value(r)],
                    [r.score],
                    marker=marker,
                    markersize=11 if marker == "*" else 7,
                    linestyle="",
                    label=name,
                )
        ax.set_xscale("log")
        ax.set_xlabel("visual tokens processed per question" if x == "tokens" else "seconds per question")
        ax.set_ylabel("score")
        ax.set_title(benchmark)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    figure.savefig(path, dpi=120)


def write_budget_summary(results_dir: str | Path, per_sample: Mapping, out_dir: Path) -> str | None:
    """budgets.md / .csv and the two plots, when some answers files record their cost; returns the table."""
    costs = collect_costs(results_dir)
    rows = budget_rows(collect_scores(results_dir, with_auto=True), costs, per_sample)
    if not rows:
        return None
    table = write_budgets(rows, out_dir)
    curves = policy_curves(results_dir, sorted(costs))
    plot_budgets(rows, curves, out_dir / "budgets_tokens.png", "tokens")
    if any(row.seconds is not None for row in rows):
        plot_budgets(rows, curves, out_dir / "budgets_time.png", "seconds")
    return table


def main(argv: list[str] | None = None) -> Scores:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", required=True, help="folder of <benchmark>/<scale>/results.json")
    parser.add_argument(
        "--out-dir", help="where to write sweep.*, oracle.* and budgets.* (default: the results folder)"
    )
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
    budgets = write_budget_summary(args.results_dir, per_sample, out_dir)
    if budgets:
        print(budgets)
    return scores


if __name__ == "__main__":
    try:
        main()
    except SweepError as e:
        raise SystemExit(f"error: {e}") from None
