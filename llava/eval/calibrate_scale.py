"""Calibrate the adaptive budget: the per-rung thresholds of a `ScalePolicy` for a target, from evaluation runs.

    python -m llava.eval.calibrate_scale --results-dir eval_results/textvqa --max-drop 1 --model-path P

Input: a benchmark's results folder as `llava.eval.sweep` reads it, one subfolder per scale, each with the
scorer's `per_sample.json` ({question id: correct}) and the harness's answers file at that scale copied
beside it as `answers.jsonl` (its lines carry p_first and the visual tokens in their metadata):

    eval_results/textvqa/1/per_sample.json    eval_results/textvqa/1/answers.jsonl
    eval_results/textvqa/9/...                ...  576/

Because a policy's answer at a rung is the fixed scale's answer (same prompt, same budget, same greedy
decoding) and its signal is the fixed scale's p_first, any policy over these scales can be scored
exactly from the files (`simulate`). The search tries every sub-ladder of the scales (the last rung
always answers) and, per rung, thresholds at quantiles of that scale's p_first, and keeps

- with `--max-drop D`: the policy that processes the fewest visual tokens on average (every rung tried
  counts) among those at most D points below the largest scale's accuracy;
- with `--max-tokens N`: the most accurate policy that processes at most N visual tokens on average.

Ties go to the more accurate, then the cheaper, then the shorter ladder, then the lower thresholds, so
the same input always gives the same policy. The policy is written as `matryoshka_policy.json` into
`--model-path` (where `--matryoshka_vis_token_scale auto` finds it) or to `--output`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llava.eval.scoring.common import ScoringError, read_jsonl, run_cli
from llava.model.matryoshka import parse_scales
from llava.scale_policy import ScalePolicy, policy_path, write_policy_file

logger = logging.getLogger(__name__)

DEFAULT_GRID = 16
"""Candidate thresholds per rung: quantiles of the rung's p_first."""


class CalibrationError(ScoringError):
    """Bad calibration input; the message names the file, the record and the value."""


@dataclass(frozen=True)
class ScaleTable:
    """Per sample and scale: the answer's correctness, its p_first and the visual tokens it read.

    Rows are samples (`ids`, sorted), columns are `scales` (increasing); arrays are (N, S).
    """

    ids: list[str]
    scales: list[int]
    correct: np.ndarray
    p_first: np.ndarray
    tokens: np.ndarray

    def column(self, scale: int) -> int:
        if scale not in self.scales:
            raise CalibrationError(f"scale {scale} has no results (scales with results: {self.scales})")
        return self.scales.index(scale)

    def accuracy(self, scale: int) -> float:
        """Percent of samples the fixed scale answers correctly (soft scores count as they are)."""
        return 100.0 * float(self.correct[:, self.column(scale)].mean())

    def mean_tokens(self, scale: int) -> float:
        return float(self.tokens[:, self.column(scale)].mean())


@dataclass(frozen=True)
class PolicyOutcome:
    """What a policy does on a table: accuracy (percent) and mean visual tokens, answering and processed."""

    policy: ScalePolicy
    accuracy: float
    visual_tokens: float
    """Mean visual tokens of the answering rung."""
    visual_tokens_processed: float
    """Mean visual tokens over every rung tried: what the policy costs."""
    answered_at: dict[int, int]
    """How many samples each rung answered."""

    def summary(self) -> dict[str, Any]:
        return {
            "accuracy": round(self.accuracy, 3),
            "visual_tokens": round(self.visual_tokens, 2),
            "visual_tokens_processed": round(self.visual_tokens_processed, 2),
            "answered_at": {str(s): n for s, n in self.answered_at.items()},
        }


def build_table(by_scale: Mapping[int, Mapping[str, tuple[float, float, int]]]) -> ScaleTable:
    """A table from {scale: {sample id: (correct, p_first, visual tokens)}}; every scale must cover the same samples."""
    if not by_scale:
        raise CalibrationError("no scales to calibrate on")
    scales = sorted(by_scale)
    ids = sorted(by_scale[scales[0]])
    for scale in scales[1:]:
        difference = set(ids).symmetric_difference(by_scale[scale])
        if difference:
            raise CalibrationError(
                f"scales {scales[0]} and {scale} cover different samples ({len(difference)} differ, "
                f"e.g. {sorted(difference)[0]!r})"
            )
    if not ids:
        raise CalibrationError("no samples to calibrate on")
    values = np.array([[by_scale[s][i] for s in scales] for i in ids], dtype=np.float64)  # (N, S, 3)
    return ScaleTable(ids, scales, values[..., 0], values[..., 1], values[..., 2])


# -- reading a results folder --------------------------------------------------------------------------


def read_results(results_dir: str | Path) -> ScaleTable:
    """The table of a benchmark's results folder: `<scale>/per_sample.json` joined with `<scale>/answers.jsonl`
    by question id (folders that are not a scale, such as `auto/`, are skipped)."""
    folder = Path(results_dir)
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: results folder not found")
    by_scale = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        by_scale[int(sub.name)] = _read_scale(sub)
    if not by_scale:
        raise CalibrationError(f"{folder}: no <scale>/ folders with per_sample.json and answers.jsonl")
    return build_table(by_scale)


def _read_scale(folder: Path) -> dict[str, tuple[float, float, int]]:
    correct_path, answers_path = folder / "per_sample.json", folder / "answers.jsonl"
    for path, what in ((correct_path, "the scorer's --per-sample output"), (answers_path, "the harness's answers")):
        if not path.is_file():
            raise CalibrationError(f"{path}: not found; put {what} for scale {folder.name} there")
    try:
        correct = json.loads(correct_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{correct_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(correct, dict):
        raise CalibrationError(f"{correct_path}: expected {{question id: correct}}, got {type(correct).__name__}")
    signals: dict[str, tuple[float, int]] = {}
    for number, line in read_jsonl(answers_path, CalibrationError):
        where = f"{answers_path}:{number}"
        metadata = line.get("metadata") or {}
        if "question_id" not in line or not isinstance(metadata.get("p_first"), int | float):
            raise CalibrationError(
                f"{where}: no question_id or no metadata.p_first; answer with llava.eval's harness, which records it"
            )
        qid = str(line["question_id"])
        if qid in signals:
            raise CalibrationError(
                f"{where}: question_id {qid!r} answered twice; calibration needs one answer per question"
            )
        signals[qid] = (float(metadata["p_first"]), int(metadata.get("visual_tokens", int(folder.name))))
    unmatched = sorted(set(correct) - set(signals))
    if unmatched:
        raise CalibrationError(
            f"{correct_path}: {len(unmatched)} scored samples have no line in {answers_path} (e.g. {unmatched[0]!r}); "
            "calibration joins them by question id"
        )
    table = {}
    for qid, value in correct.items():
        if isinstance(value, bool) or isinstance(value, int | float) and 0 <= value <= 1:
            table[qid] = (float(value), *signals[qid])
        else:
            raise CalibrationError(
                f"{correct_path}: sample {qid!r} has correctness {value!r}; expected a bool or [0, 1]"
            )
    return table


# -- scoring a policy ------------------------------------------------------------------------------------


def simulate(table: ScaleTable, policy: ScalePolicy) -> PolicyOutcome:
    """What `policy` answers on `table`: each sample at the first rung whose p_first clears its threshold."""
    columns = [table.column(scale) for scale in policy.ladder]
    rows = np.arange(len(table.ids))
    undecided = np.ones(len(rows), dtype=bool)
    answered = np.zeros(len(rows), dtype=np.int64)
    processed = np.zeros(len(rows))
    for rung, column in enumerate(columns):
        processed += np.where(undecided, table.tokens[:, column], 0.0)
        keep = (
            undecided if rung == len(columns) - 1 else undecided & (table.p_first[:, column] > policy.thresholds[rung])
        )
        answered[keep] = column
        undecided &= ~keep
    counts = np.bincount(answered, minlength=len(table.scales))
    return PolicyOutcome(
        policy,
        accuracy=100.0 * float(table.correct[rows, answered].mean()),
        visual_tokens=float(table.tokens[rows, answered].mean()),
        visual_tokens_processed=float(processed.mean()),
        answered_at={scale: int(counts[table.column(scale)]) for scale in policy.ladder},
    )


def threshold_curve(table: ScaleTable, ladder: Sequence[int], points: int = 41) -> list[PolicyOutcome]:
    """One threshold for every rung of `ladder`, swept from 0 (always the first rung) to 1 (always the last)
    through quantiles of the observed p_first: the policy's accuracy against visual tokens."""
    observed = np.concatenate([table.p_first[:, table.column(scale)] for scale in ladder[:-1]] or [np.zeros(0)])
    inner = np.quantile(observed, np.linspace(0, 1, points)) if observed.size else np.zeros(0)
    thresholds = sorted({0.0, 1.0, *(round(float(t), 6) for t in inner)})
    return [simulate(table, ScalePolicy.uniform(ladder, t)) for t in thresholds]


# -- the search -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a calibrated policy must meet: at most `max_drop` points below the largest scale's accuracy,
    or at most `max_tokens` visual tokens processed on average (exactly one is set)."""

    max_drop: float | None = None
    max_tokens: float | None = None

    def __post_init__(self) -> None:
        if (self.max_drop is None) == (self.max_tokens is None):
            raise CalibrationError("give exactly one target: --max-drop POINTS or --max-tokens N")
        for name, value in (("max-drop", self.max_drop), ("max-tokens", self.max_tokens)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise CalibrationError(f"--{name} must be a number >= 0, got {value}")

    def describe(self, reference: float) -> str:
        if self.max_drop is not None:
            return f"accuracy >= {reference - self.max_drop:.2f}% ({self.max_drop:g} points below the largest scale)"
        return f"at most {self.max_tokens:g} visual tokens processed on average"

    def met(self, outcome: PolicyOutcome, reference: float) -> bool:
        if self.max_drop is not None:
            return outcome.accuracy >= reference - self.max_drop - 1e-9
        return outcome.visual_tokens_processed <= self.max_tokens + 1e-9

    def rank(self, outcome: PolicyOutcome) -> tuple:
        """Smaller is better: the target's own criterion first, then the other, then the simpler policy."""
        cost, accuracy = round(outcome.visual_tokens_processed, 9), -round(outcome.accuracy, 9)
        first = (cost, accuracy) if self.max_drop is not None else (accuracy, cost)
        return (*first, len(outcome.policy.ladder), outcome.policy.ladder, outcome.policy.thresholds)


def candidate_thresholds(table: ScaleTable, scale: int, grid: int) -> list[float]:
    """`grid` thresholds at evenly spaced quantiles (strictly inside 0 and 1) of the scale's p_first."""
    values = table.p_first[:, table.column(scale)]
    quantiles = np.quantile(values, (np.arange(grid) + 0.5) / grid)
    return sorted({round(float(q), 6) for q in quantiles})


def candidate_policies(table: ScaleTable, ladder: Sequence[int], grid: int) -> Iterator[ScalePolicy]:
    """Every non-empty sub-ladder of `ladder` with every combination of candidate thresholds on its rungs."""
    candidates = {scale: candidate_thresholds(table, scale, grid) for scale in ladder}
    for size in range(1, len(ladder) + 1):
        for rungs in itertools.combinations(ladder, size):
            for thresholds in itertools.product(*(candidates[s] for s in rungs[:-1])):
                yield ScalePolicy(rungs, (*thresholds, 0.0))


def search(
    table: ScaleTable, target: Target, ladder: Sequence[int] | None = None, grid: int = DEFAULT_GRID
) -> PolicyOutcome:
    """The best policy for `target` over `candidate_policies`; a CalibrationError when none meets it."""
    ladder = sorted(ladder or table.scales)
    reference = table.accuracy(ladder[-1])
    best: PolicyOutcome | None = None
    for policy in candidate_policies(table, ladder, grid):
        outcome = simulate(table, policy)
        if target.met(outcome, reference) and (best is None or target.rank(outcome) < target.rank(best)):
            best = outcome
    if best is None:
        raise CalibrationError(f"no policy over the ladder {ladder} meets the target: {target.describe(reference)}")
    return best


# -- command line -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--results-dir", required=True, help="one benchmark's folder of <scale>/per_sample.json + answers.jsonl"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--max-drop", type=float, help="at most this many points below the largest scale's accuracy")
    target.add_argument("--max-tokens", type=float, help="at most this many visual tokens processed on average")
    parser.add_argument(
        "--ladder", default=None, help="budgets to consider, e.g. 1,9,36,144,576 (default: all with results)"
    )
    parser.add_argument("--grid", type=int, default=DEFAULT_GRID, help="candidate thresholds per rung")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-path", help="checkpoint folder: writes its matryoshka_policy.json")
    where.add_argument("--output", help="policy file to write instead")
    args = parser.parse_args(argv)
    if args.grid < 1:
        parser.error(f"--grid must be at least 1, got {args.grid}")
    return args


def main(argv: Sequence[str] | None = None) -> PolicyOutcome:
    args = parse_args(argv)
    table = read_results(args.results_dir)
    try:
        ladder = parse_scales(args.ladder) if args.ladder else table.scales
    except ValueError as e:
        raise CalibrationError(f"--ladder: {e}") from None
    target = Target(args.max_drop, args.max_tokens)
    best = search(table, target, ladder, args.grid)
    single = [o for o in threshold_curve(table, ladder) if target.met(o, table.accuracy(ladder[-1]))]
    reference = table.accuracy(ladder[-1])
    calibration = {
        "target": target.describe(reference),
        "results_dir": str(args.results_dir),
        "samples": len(table.ids),
        "ladder_searched": ladder,
        "fixed_scales": {
            str(s): {"accuracy": round(table.accuracy(s), 3), "visual_tokens": round(table.mean_tokens(s), 2)}
            for s in table.scales
        },
        "policy": best.summary(),
    }
    out = Path(args.output) if args.output else policy_path(args.model_path)
    write_policy_file(out, best.policy, calibration)
    print(
        f"{len(table.ids)} samples; largest scale {ladder[-1]}: {reference:.2f}%; target: {target.describe(reference)}"
    )
    print(f"policy: {best.policy.describe()}")
    print(
        f"  accuracy {best.accuracy:.2f}%, visual tokens {best.visual_tokens:.1f} answering, "
        f"{best.visual_tokens_processed:.1f} processed ({100 * best.visual_tokens_processed / table.mean_tokens(ladder[-1]):.1f}% of {ladder[-1]}'s)"
    )
    if single:
        top = min(single, key=target.rank)
        print(
            f"  (one threshold for every rung at best: {top.policy.describe()}: {top.accuracy:.2f}%, {top.visual_tokens_processed:.1f} processed)"
        )
    print(f"wrote {out}")
    return best


if __name__ == "__main__":
    run_cli(main)
