"""M3 on a laptop: answer held-out M3-Shapes questions at every visual-token budget, and adaptively.

    python -m llava.eval.shapes_demo [--model-path playground/shapes-m3-tiny] [--num-images 60]

Generates the held-out split (seeded, a few seconds), loads the checkpoint with
`load_pretrained_model` and answers every question with batched `generate` at each budget
(576 / 144 / 36 / 9 / 1 visual tokens), exactly as users call the model, and with the adaptive budget
(`--matryoshka_vis_token_scale auto`: the checkpoint's calibrated `ScalePolicy`). Each batch's images are
encoded once; every budget and the policy pool that one encoding, and each is timed in the same run,
batched the same way. Prints accuracy by question type and difficulty × budget, then the cost table
(accuracy, visual tokens answering and processed, wall time per question for every budget, the policy and
the oracle) with the issue's target check, and writes `shapes_accuracy.png` (accuracy against visual
tokens by difficulty), `shapes_budgets.png` (accuracy against visual tokens processed: the five budgets,
the policy curve sweeping one threshold, the calibrated policy and the oracle) and `shapes_results.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llava.adaptive import AdaptiveAnswer, answer_adaptive, answer_every_scale, checkpoint_policy
from llava.data import shapes
from llava.eval.calibrate_scale import PolicyOutcome, ScaleTable, build_table, simulate, threshold_curve
from llava.eval.scoring.shapes import gold_answer, question_text
from llava.eval.sweep import oracle
from llava.generation import Generator, PromptBatch, SamplingParams
from llava.mm_utils import get_model_name_from_path
from llava.model.builder import load_pretrained_model
from llava.model.cpu_packing import prepare_for_inference
from llava.model.matryoshka import TRAINED_SCALES, parse_scales
from llava.optional import optional_dependency
from llava.scale_policy import ScalePolicy, load_checkpoint_policy

with optional_dependency():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = "playground/shapes-m3-tiny"
ROWS = (*shapes.DIFFICULTIES, *shapes.QUESTION_TYPES)
AUTO = "auto"
TARGET_DROP = 1.0
"""Issue 20's target: accuracy within this many points of the largest budget's ..."""
TARGET_TOKEN_SHARE = 0.20
"""... at no more than this share of its visual tokens (processed), and faster per question."""


@dataclass
class DemoAnswers:
    """Everything one demo run measured, per record id."""

    texts: dict[int | str, dict[str, str]] = field(default_factory=dict)
    """{scale or "auto": {record id: answer}}."""
    p_first: dict[int, dict[str, float]] = field(default_factory=dict)
    tokens: dict[int, dict[str, int]] = field(default_factory=dict)
    adaptive: dict[str, AdaptiveAnswer] = field(default_factory=dict)
    seconds: dict[int | str, float] = field(default_factory=dict)
    """Wall time per budget over the run, the tower's shared pass included in each."""
    tower_seconds: float = 0.0
    """Wall time of the tower's passes, once per batch for every budget."""


@torch.no_grad()
def answer_all(
    records: Sequence[dict],
    image_folder: Path,
    generator: Generator,
    scales: Sequence[int],
    batch_size: int = 64,
    policy: ScalePolicy | None = None,
) -> DemoAnswers:
    """Answer every record at every scale (and with `policy`), each batch's images encoded once."""
    params = SamplingParams(temperature=0, max_new_tokens=3)
    run = DemoAnswers()
    labels: list[int | str] = [*scales, *([AUTO] if policy is not None else [])]
    for label in labels:
        run.texts[label], run.seconds[label] = {}, 0.0
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        ids = [r["id"] for r in batch]
        images = [Image.open(image_folder / r["image"]).convert("RGB") for r in batch]
        input_ids = [generator.tokenize(generator.prompt(question_text(r), 1)) for r in batch]
        started = time.perf_counter()
        encoded = PromptBatch(input_ids, generator.encode(generator.pixels(images)))
        tower_seconds = time.perf_counter() - started
        run.tower_seconds += tower_seconds
        _, by_scale = answer_every_scale(generator, encoded, scales, params)
        for scale, result in by_scale.items():
            run.texts[scale].update(zip(ids, result.texts))
            run.p_first.setdefault(scale, {}).update(zip(ids, result.p_first))
            run.tokens.setdefault(scale, {}).update(zip(ids, result.visual_tokens))
            run.seconds[scale] += tower_seconds + result.seconds
        if policy is not None:
            started = time.perf_counter()
            answers = answer_adaptive(generator, encoded, policy, params)
            run.seconds[AUTO] += tower_seconds + time.perf_counter() - started
            run.adaptive.update(zip(ids, answers))
            run.texts[AUTO].update((i, a.text) for i, a in zip(ids, answers))
    return run


@dataclass
class DemoRun:
    """A scored demo run."""

    records: list[dict]
    answers: DemoAnswers
    scores: dict[int | str, dict]
    """{scale or "auto": `shapes.score(...)`}."""
    policy: ScalePolicy | None
    table: ScaleTable
    """Correctness, p_first and tokens per record and scale: the input of policy simulations."""


def run_demo(
    model_path: str | Path,
    data_dir: str | Path,
    num_images: int,
    scales: Sequence[int] = TRAINED_SCALES,
    seed: int = shapes.DEFAULT_SEEDS["test"],
    batch_size: int = 64,
    device: str = "cpu",
    adaptive: bool = True,
) -> DemoRun:
    """Answer the first `num_images` held-out images at every scale and, with `adaptive`, with the checkpoint's policy."""
    data_dir = Path(data_dir)
    name = get_model_name_from_path(str(model_path))
    tokenizer, model, image_processor, _ = load_pretrained_model(str(model_path), None, name, device=device)
    prepare_for_inference(model)
    records = shapes.generate_split(data_dir, "test", num_images, seed, model.get_vision_tower().image_size)
    generator = Generator(tokenizer, model, image_processor, name)
    policy = checkpoint_policy(model, model_path) if adaptive else None
    if policy is not None:  # the policy is compared with, and replayed from, the fixed budgets of its ladder
        scales = sorted(set(scales) | set(policy.ladder), reverse=True)
    answers = answer_all(records, data_dir, generator, scales, batch_size, policy)
    scores = {label: shapes.score(records, texts) for label, texts in answers.texts.items()}
    gold = {r["id"]: gold_answer(r) for r in records}
    table = build_table(
        {
            scale: {
                i: (float(shapes.answer_matches(text, gold[i])), answers.p_first[scale][i], answers.tokens[scale][i])
                for i, text in answers.texts[scale].items()
            }
            for scale in scales
        }
    )
    return DemoRun(records, answers, scores, policy, table)


def accuracy_table(results: dict[int | str, dict]) -> str:
    """Markdown table: rows = overall, difficulties, question types; columns = visual tokens (then auto)."""
    labels = [*sorted((k for k in results if isinstance(k, int)), reverse=True), *[k for k in results if k == AUTO]]
    lines = ["| questions (n) | " + " | ".join(str(s) for s in labels) + " |", "|---|" + "---:|" * len(labels)]
    first = results[labels[0]]
    for row in ("overall", *ROWS):
        if row == "overall":
            total, cells = first["total"], [results[s]["accuracy"] for s in labels]
        else:
            group = "by_difficulty" if row in shapes.DIFFICULTIES else "by_question_type"
            if row not in first[group]:
                continue
            total, cells = first[group][row]["total"], [results[s][group][row]["accuracy"] for s in labels]
        name = f"**{row}**" if row == "overall" or row in shapes.DIFFICULTIES else row
        lines.append(f"| {name} ({total}) | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BudgetLine:
    """One row of the cost table."""

    name: str
    accuracy: float
    visual_tokens: float
    visual_tokens_processed: float
    ms_per_question: float | None


def budget_lines(run: DemoRun) -> list[BudgetLine]:
    """The fixed budgets (largest first), the policy as measured, and the oracle."""
    n = len(run.records)
    scales = sorted(run.table.scales, reverse=True)
    lines = [
        BudgetLine(
            str(s),
            run.table.accuracy(s),
            run.table.mean_tokens(s),
            run.table.mean_tokens(s),
            1000 * run.answers.seconds[s] / n,
        )
        for s in scales
    ]
    if run.answers.adaptive:
        answers = list(run.answers.adaptive.values())
        lines.append(
            BudgetLine(
                AUTO,
                100 * run.scores[AUTO]["accuracy"],
                sum(a.visual_tokens for a in answers) / n,
                sum(a.visual_tokens_processed for a in answers) / n,
                1000 * run.answers.seconds[AUTO] / n,
            )
        )
    best = oracle({s: dict(zip(run.table.ids, run.table.correct[:, k])) for k, s in enumerate(run.table.scales)})
    lines.append(BudgetLine("oracle", 100 * best.accuracy, best.mean_tokens, best.mean_tokens, None))
    return lines


def budget_table(lines: Sequence[BudgetLine]) -> str:
    rows = ["| budget | accuracy (%) | visual tokens | processed | ms / question |", "|---|---:|---:|---:|---:|"]
    for line in lines:
        ms = "–" if line.ms_per_question is None else f"{line.ms_per_question:.2f}"
        rows.append(
            f"| {line.name} | {line.accuracy:.2f} | {line.visual_tokens:.1f} | {line.visual_tokens_processed:.1f} | {ms} |"
        )
    return "\n".join(rows) + "\n"


def target_check(lines: Sequence[BudgetLine]) -> str | None:
    """Issue 20's target for the measured policy against the largest budget, both from this run."""
    by_name = {line.name: line for line in lines}
    if AUTO not in by_name:
        return None
    auto, full = by_name[AUTO], by_name[max((line.name for line in lines if line.name.isdigit()), key=int)]
    checks = [
        (
            auto.accuracy >= full.accuracy - TARGET_DROP,
            f"accuracy {auto.accuracy:.2f}% >= {full.name}'s {full.accuracy:.2f}% - {TARGET_DROP:g}",
        ),
        (
            auto.visual_tokens_processed <= TARGET_TOKEN_SHARE * full.visual_tokens_processed,
            f"visual tokens processed {auto.visual_tokens_processed:.1f} = "
            f"{100 * auto.visual_tokens_processed / full.visual_tokens_processed:.1f}% of {full.name}'s (<= {100 * TARGET_TOKEN_SHARE:.0f}%)",
        ),
        (
            auto.ms_per_question < full.ms_per_question,
            f"{auto.ms_per_question:.2f} ms per question < {full.name}'s {full.ms_per_question:.2f} ms",
        ),
    ]
    verdict = "met" if all(ok for ok, _ in checks) else "NOT met"
    return f"target {verdict}: " + "; ".join(f"{text} [{'ok' if ok else 'no'}]" for ok, text in checks)


def plot(results: dict[int | str, dict], path: str | Path, title: str) -> None:
    """Accuracy against visual tokens (log x): overall and one line per difficulty, fixed budgets only."""
    scales = sorted(k for k in results if isinstance(k, int))
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.plot(scales, [100 * results[s]["accuracy"] for s in scales], marker="o", linewidth=2.5, label="overall")
    for difficulty in shapes.DIFFICULTIES:
        if difficulty in results[scales[0]]["by_difficulty"]:
            values = [100 * results[s]["by_difficulty"][difficulty]["accuracy"] for s in scales]
            ax.plot(scales, values, marker="o", linestyle="--", label=difficulty)
    _log_tokens_axis(ax, scales)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend()
    figure.savefig(path, dpi=120)


def plot_budgets(run: DemoRun, lines: Sequence[BudgetLine], path: str | Path, title: str) -> None:
    """Accuracy against mean visual tokens processed (log x): the fixed budgets, the policy curve sweeping one
    threshold over the policy's ladder (simulated from the fixed budgets' answers), the measured policy, the oracle."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    fixed = [line for line in lines if line.name.isdigit()][::-1]
    ax.plot(
        [x.visual_tokens_processed for x in fixed],
        [x.accuracy for x in fixed],
        marker="o",
        linewidth=2,
        label="fixed budgets",
    )
    ladder = list(run.policy.ladder) if run.policy is not None else run.table.scales
    curve: list[PolicyOutcome] = threshold_curve(run.table, ladder)
    ax.plot(
        [o.visual_tokens_processed for o in curve],
        [o.accuracy for o in curve],
        linewidth=1.2,
        label=f"policy {'→'.join(map(str, ladder))}, one threshold swept",
    )
    for line, marker, label in [(x, "*", "auto (calibrated, measured)") for x in lines if x.name == AUTO] + [
        (x, "D", "oracle") for x in lines if x.name == "oracle"
    ]:
        ax.plot(
            [line.visual_tokens_processed],
            [line.accuracy],
            marker=marker,
            markersize=12 if marker == "*" else 7,
            linestyle="",
            label=label,
        )
    _log_tokens_axis(ax, [x.visual_tokens_processed for x in fixed], [x.name for x in fixed])
    ax.set_xlabel("visual tokens processed per question (every rung tried)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    figure.savefig(path, dpi=120)


def _log_tokens_axis(ax: Any, ticks: Sequence[float], labels: Sequence[str] | None = None) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ticks, labels or [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("visual tokens per image")
    ax.grid(True, alpha=0.3)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Accuracy of an M3 checkpoint on M3-Shapes at every visual-token budget, and adaptively."
    )
    parser.add_argument("--model-path", default=DEFAULT_MODEL_PATH)
    parser.add_argument(
        "--num-images",
        type=int,
        default=shapes.DEFAULT_NUM_IMAGES["test"],
        help="held-out images to answer (each has 4-7 questions)",
    )
    parser.add_argument("--scales", default=",".join(str(s) for s in sorted(TRAINED_SCALES, reverse=True)))
    parser.add_argument(
        "--adaptive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also answer with the checkpoint's calibrated policy (--matryoshka_vis_token_scale auto); the budgets "
        "of its ladder are answered too",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("playground/data/shapes-demo"))
    parser.add_argument("--out-dir", type=Path, default=Path("playground/data/shapes-demo"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def report(run: DemoRun, args: argparse.Namespace, elapsed: float) -> dict[str, Any]:
    """Print the tables and write the plots and the JSON; returns what the JSON holds."""
    total = run.scores[run.table.scales[0]]["total"]
    print(
        f"\nM3-Shapes ({shapes.DATA_VERSION}, held-out split, {args.num_images} images, {total} questions), "
        f"{args.model_path}: accuracy (%) by visual tokens per image\n"
    )
    print(accuracy_table(run.scores))
    lines = budget_lines(run)
    summary: dict[str, Any] = {"budgets": [line.__dict__ for line in lines]}
    if run.policy is not None:
        stored = load_checkpoint_policy(args.model_path)
        where = f"calibrated: {stored.calibration.get('target', '?')}" if stored else "uncalibrated default"
        simulated = simulate(run.table, run.policy)
        same = sum(a.text == run.answers.texts[a.scale][i] for i, a in run.answers.adaptive.items())
        print(f"auto = {run.policy.describe()} ({where})")
        print(
            f"  answered at {simulated.answered_at}; answers equal to the fixed budget's at the budget used: "
            f"{same}/{total}; accuracy simulated from the fixed budgets' answers: {simulated.accuracy:.2f}%\n"
        )
        summary["policy"] = {**run.policy.to_dict(), "answered_at": simulated.answered_at, "equal_answers": same}
    print(budget_table(lines))
    check = target_check(lines)
    if check:
        print(check + "\n")
        summary["target"] = check
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(args.model_path).name
    plot(run.scores, args.out_dir / "shapes_accuracy.png", f"M3-Shapes: {name}")
    plot_budgets(run, lines, args.out_dir / "shapes_budgets.png", f"M3-Shapes: {name}, adaptive budget")
    walks = {label: seconds - run.answers.tower_seconds for label, seconds in run.answers.seconds.items()}
    print(
        f"plots: {args.out_dir / 'shapes_accuracy.png'}, {args.out_dir / 'shapes_budgets.png'}   "
        f"results: {args.out_dir / 'shapes_results.json'}\n{elapsed:.0f} s for {total} questions x "
        f"{len(run.scores)} budgets: the tower {run.answers.tower_seconds:.0f} s, then "
        + ", ".join(f"{label} {seconds:.0f} s" for label, seconds in walks.items())
    )
    return summary


def main(argv: Sequence[str] | None = None) -> DemoRun:
    args = parse_args(argv)
    scales = parse_scales(args.scales)
    start = time.perf_counter()
    run = run_demo(
        args.model_path,
        args.data_dir,
        args.num_images,
        scales,
        batch_size=args.batch_size,
        device=args.device,
        adaptive=args.adaptive,
    )
    summary = report(run, args, time.perf_counter() - start)
    with open(args.out_dir / "shapes_results.json", "w", encoding="utf-8") as f:
        json.dump(
            {
                "model_path": str(args.model_path),
                "data_version": shapes.DATA_VERSION,
                "num_images": args.num_images,
                "results": {str(s): r for s, r in run.scores.items()},
                **summary,
            },
            f,
            indent=1,
        )
    return run


if __name__ == "__main__":
    main()
