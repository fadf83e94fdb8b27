"""Training-step time of the M3 objective against one budget and against the naive multi-pass way.

    python benchmarks/bench_train.py                      # tiny random model on CPU
    python benchmarks/bench_train.py --device cuda --model-path checkpoints/llava-v1.5-7b-m3 --dtype bfloat16

Three objectives on the same batch, the vision tower frozen (as in the M3 recipe's cheapest setting):
- `m3`: the model's own M3 loss: tower and projector once, the LLM once per budget;
- `single`: one budget (the largest) only: plain LLaVA training;
- `single_m3_path`: the largest budget alone through the M3 code path (logits only where labelled);
- `naive`: one full forward per budget, tower included (what the original M3 code does).
A step is forward, backward and an AdamW step. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from llava.data.shapes import generate_split
from llava.mm_utils import processor_crop_size
from llava.model.builder import load_image_processor
from llava.model.matryoshka import TRAINED_SCALES, parse_scales
from llava.testing import build_tiny_llava
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, VisualTokenBudget
from llava.train.preprocess import ConversationTemplate


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", help="a LLaVA/M3 checkpoint (default: a tiny random one)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per objective")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per objective")
    parser.add_argument("--scales", default=",".join(map(str, TRAINED_SCALES)))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", help="JSON report (default: benchmarks/results/train_<model>_<device>.json)")
    return parser.parse_args(argv)


def load_model(args: argparse.Namespace, workdir: Path) -> Any:
    from llava.model.builder import load_pretrained_model

    path = args.model_path or str(build_tiny_llava(workdir / "tiny-llava"))
    _, model, _, _ = load_pretrained_model(path, None, Path(path).name, device=args.device, dtype=args.dtype)
    return model


def make_batch(model: Any, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One real batch: synthetic shapes images through the training dataset and collator."""
    path = args.model_path or str(workdir / "tiny-llava")
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = load_image_processor(path, model.config)
    image_size = max(48, processor_crop_size(processor))
    generate_split(workdir / "data", "train", num_images=args.batch_size, seed=0, image_size=image_size)
    dataset = LazySupervisedDataset(
        workdir / "data" / "train.json",
        str(workdir / "data"),
        tokenizer,
        ConversationTemplate.from_name("v1"),
        processor,
        model.config,
        VisualTokenBudget.from_model(model),
        max_length=4096,
    )
    batch = DataCollatorForSupervisedDataset(tokenizer.pad_token_id)([dataset[i] for i in range(args.batch_size)])
    dtype = getattr(torch, args.dtype)
    return {
        k: (v.to(args.device, dtype) if k == "images" else v.to(args.device)) if torch.is_tensor(v) else v
        for k, v in batch.items()
    }


def objectives(model: Any, scales: list[int]) -> dict[str, Callable[[dict[str, Any]], torch.Tensor]]:
    def m3(batch: dict[str, Any]) -> torch.Tensor:
        return model(**batch).loss  # config.matryoshka_vis_token_scale = scales: the M3 loss

    def single(batch: dict[str, Any]) -> torch.Tensor:
        return model(**batch, matryoshka_vis_token_scale=max(scales)).loss

    def one_budget_m3_path(batch: dict[str, Any]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "matryoshka_vis_token_scale"}
        return model.matryoshka_forward(**inputs, scales=[max(scales)]).loss

    def naive(batch: dict[str, Any]) -> torch.Tensor:
        losses = [model(**batch, matryoshka_vis_token_scale=s).loss for s in scales]
        return torch.stack(losses).mean()

    return {"m3": m3, "single": single, "single_m3_path": one_budget_m3_path, "naive": naive}


def time_objectives(
    model: Any,
    losses: dict[str, Callable[[dict[str, Any]], torch.Tensor]],
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    """Seconds per step and vision-tower calls per step of each objective.

    The objectives take turns step by step, so a machine whose load drifts slows them alike.
    """
    calls: list[int] = []
    hook = model.get_vision_tower().register_forward_hook(lambda *_: calls.append(1))
    times: dict[str, list[float]] = {name: [] for name in losses}
    tower_calls: dict[str, int] = {}
    try:
        for step in range(args.warmup + args.steps):
            for name, loss_fn in losses.items():
                calls.clear()
                _synchronize(args.device)
                start = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss_fn(batch).backward()
                optimizer.step()
                _synchronize(args.device)
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - start)
                tower_calls[name] = len(calls)
    finally:
        hook.remove()
    return {
        name: {"median_s": statistics.median(t), "times_s": t, "tower_calls_per_step": tower_calls[name]}
        for name, t in times.items()
    }


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    scales = parse_scales(args.scales)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = load_model(args, workdir)
        batch = make_batch(model, args, workdir)
    model.config.matryoshka_vis_token_scale = scales
    model.config.matryoshka_scale_weights = None
    model.config.validate_multimodal()
    model.config.use_cache = False
    model.train()
    model.get_vision_tower().requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    results = time_objectives(model, objectives(model, scales), batch, optimizer, args)
    single = results["single"]["median_s"]
    for result in results.values():
        result["vs_single"] = result["median_s"] / single
    report = {
        "device": args.device,
        "dtype": args.dtype,
        "model": args.model_path or "tiny random (llava.testing.build_tiny_llava)",
        "batch_size": args.batch_size,
        "scales": scales,
        "threads": args.threads,
        "results": results,
        "m3_vs_naive": results["m3"]["median_s"] / results["naive"]["median_s"],
    }
    print(markdown_table(report))
    model_name = Path(args.model_path).name if args.model_path else "tiny"
    output = Path(args.output or f"benchmarks/results/train_{model_name}_{args.device}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n")
    return report


def markdown_table(report: dict[str, Any]) -> str:
    lines = [
        f"Training step, {report['model']}, {report['device']} {report['dtype']}, batch {report['batch_size']}, "
        f"budgets {report['scales']}, vision tower frozen",
        "",
        "| objective | tower calls / step | step (ms, median) | vs single budget |",
        "|---|---|---|---|",
    ]
    for name, result in report["results"].items():
        lines.append(
            f"| {name} | {result['tower_calls_per_step']} | {1000 * result['median_s']:.1f} | "
            f"{result['vs_single']:.2f}x |"
        )
    lines.append("")
    lines.append(f"M3 objective vs naive {len(report['scales'])}-pass: {report['m3_vs_naive']:.2f}x the time")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
