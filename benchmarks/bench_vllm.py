"""Requests/s of M3 under vLLM: the plugin at each budget against vLLM's own LLaVA on the same weights.

The same engine settings for every row (float32, `--compile` or eager, one engine at a time), the same
load: `--requests` prompts at once, each with its own M3-Shapes image, `--new-tokens` greedy tokens each
(EOS ignored, so every row generates the same count). vLLM's LLaVA gets the weights rewritten for it
(`llava.vllm_plugin.plain_llava`) and, having no budget, spends 576 tokens per image.

    python benchmarks/bench_vllm.py --model small --out benchmarks/results/vllm_small_cpu.json
    python benchmarks/bench_vllm.py --model playground/shapes-m3-tiny --requests 128

Run it in the vLLM environment (`bash scripts/ci/vllm_env.sh` prints its python). Prints a markdown
table; writes JSON with every measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from llava.conversation import get_conv_template  # noqa: E402
from llava.data import shapes  # noqa: E402
from llava.mm_utils import tokenizer_image_token  # noqa: E402
from llava.testing import build_random_llava, build_tiny_tokenizer, tiny_image_processor  # noqa: E402
from llava.vllm_plugin.plain_llava import save_plain_llava  # noqa: E402

QUESTION = "What is in the image? Describe the picture."


def save_random_checkpoint(preset: str, out_dir: Path) -> Path:
    """A random M3 pad checkpoint of a `llava.testing.PRESETS` shape, written in the on-disk format."""
    model = build_random_llava(preset, "pad")
    model.save_pretrained(out_dir)
    build_tiny_tokenizer(out_dir)
    tiny_image_processor(model.get_vision_tower().image_size).save_pretrained(out_dir)
    return out_dir


def prompt_for(template: str) -> str:
    conv = get_conv_template(template)
    conv.append_message(conv.roles[0], f"<image>\n{QUESTION}")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def measure(path: Path, rows: dict[str, int | None], images: list[Image.Image], args: argparse.Namespace) -> dict:
    """requests/s for each row (budget, None for no processor argument) on one engine: best of `--repeats`."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(path), dtype="float32", enforce_eager=not args.compile, seed=0, max_model_len=args.max_model_len
    )
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
    prompt = prompt_for(args.template)
    tokenizer = llm.get_tokenizer()
    # The plugin gets our ids with its placeholder (the shipped model's word-level tokenizer loses `<image>`
    # in text); vLLM's LLaVA gets the text, its tokenizer knows `<image>`.
    source = {"prompt": prompt}
    if tokenizer.convert_tokens_to_ids("<image>") in (None, tokenizer.unk_token_id):
        source = {
            "prompt_token_ids": tokenizer_image_token(prompt, tokenizer, image_token_index=tokenizer.pad_token_id)
        }
    results = {}
    try:
        for name, scale in rows.items():
            kwargs = {} if scale is None else {"mm_processor_kwargs": {"matryoshka_vis_token_scale": scale}}
            batch = [{**source, "multi_modal_data": {"image": image}, **kwargs} for image in images]
            llm.generate(batch[: min(4, len(batch))], params, use_tqdm=False)  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                outputs = llm.generate(batch, params, use_tqdm=False)
                best = min(best, time.perf_counter() - start)
            results[name] = {
                "matryoshka_vis_token_scale": scale,
                "prompt_tokens": len(outputs[0].prompt_token_ids),
                "seconds": best,
                "requests_per_s": len(batch) / best,
            }
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    return results


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if args.model in ("tiny", "small", "7b"):
        checkpoint = save_random_checkpoint(args.model, work / f"m3-{args.model}")
    else:
        checkpoint = Path(args.model)
    records = shapes.generate_split(work / "shapes", "test", args.requests, shapes.DEFAULT_SEEDS["test"])
    files = list(dict.fromkeys(r["image"] for r in records))  # several questions share an image
    images = [Image.open(work / "shapes" / name).convert("RGB") for name in files]
    plain = save_plain_llava(checkpoint, work / "plain-llava")
    results = measure(checkpoint, {f"plugin@{s}": s for s in args.scales}, images, args)
    results["vllm_llava@576"] = measure(plain, {"vllm_llava@576": None}, images, args)["vllm_llava@576"]
    return {
        "model": args.model,
        "requests": args.requests,
        "new_tokens": args.new_tokens,
        "compile": args.compile,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": results,
        "ratios": {
            "plugin@576 / vllm_llava@576 (time)": results["vllm_llava@576"]["requests_per_s"]
            / results["plugin@576"]["requests_per_s"],
            "plugin@9 / plugin@576 (requests/s)": results["plugin@9"]["requests_per_s"]
            / results["plugin@576"]["requests_per_s"],
        },
    }


def table(report: dict[str, Any]) -> str:
    lines = ["| engine | visual tokens | prompt tokens | requests/s |", "|---|---:|---:|---:|"]
    for name, row in report["rows"].items():
        scale = row["matryoshka_vis_token_scale"] or 576
        lines.append(f"| {name} | {scale} | {row['prompt_tokens']} | {row['requests_per_s']:.2f} |")
    lines += [f"\n{name}: {value:.3f}" for name, value in report["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small", help="a preset (tiny, small, 7b) or an M3 pad checkpoint folder")
    parser.add_argument("--template", default="v1", help="conversation template of the prompt")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--scales", type=lambda s: [int(v) for v in s.split(",")], default=[576, 144, 36, 9, 1])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--compile", action="store_true", help="let vLLM compile the model (default: eager)")
    parser.add_argument("--out", default=None, help="write the JSON results here")
    args = parser.parse_args(argv)
    if 576 not in args.scales or 9 not in args.scales:
        parser.error("--scales must include 576 and 9 (the ratios compare them)")
    with tempfile.TemporaryDirectory() as work:
        report = run(args, Path(work))
    print(table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
