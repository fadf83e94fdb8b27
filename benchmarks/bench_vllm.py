"""What M3 costs under vLLM: the plugin at each budget against vLLM's own LLaVA on the same weights.

Both engines run in this one process (in-process engine cores, float32, eager unless `--compile`), and
every timed round runs each row once, in an order that rotates from round to round, so the two engines
meet the same machine conditions. Each round gets images of its own (M3-Shapes test images), so no
row is served from a cache another row or an earlier round filled; a warm-up round on other images
comes first. Load: `--requests` prompts at once, one image each, `--new-tokens` greedy tokens each
(EOS ignored, so every row generates the same count). vLLM's LLaVA gets the weights rewritten for it
(`llava.vllm_plugin.plain_llava`) and, having no budget, spends 576 tokens per image.

Next to the whole-request rows it times the parts, on the same images, alternating engines: the
multimodal processor per image (our `process_images` against transformers' processor), the plugin's
prompt re-tokenization per request (`_postprocess_prompt`), and per image the vision tower, the
projector and the M3 pooling at each budget.

    python benchmarks/bench_vllm.py --model small --requests 8 --rounds 3 --out benchmarks/results/vllm_small_cpu.json
    python benchmarks/bench_vllm.py --model playground/shapes-m3-tiny --requests 64 --rounds 5 \\
        --out benchmarks/results/vllm_shapes_cpu.json

Run it in the vLLM environment (`bash scripts/ci/vllm_env.sh` prints its python). Prints markdown
tables; writes JSON with every measurement and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from llava.constants import DEFAULT_IMAGE_TOKEN  # noqa: E402
from llava.conversation import get_conv_template  # noqa: E402
from llava.data import shapes  # noqa: E402
from llava.mm_utils import tokenizer_image_token  # noqa: E402
from llava.model.matryoshka import pool_visual_tokens  # noqa: E402
from llava.testing import build_random_llava, build_tiny_tokenizer, tiny_image_processor  # noqa: E402
from llava.vllm_plugin.plain_llava import save_plain_llava  # noqa: E402

QUESTION = "What is in the image? Describe the picture."
SCALE_KWARG = "matryoshka_vis_token_scale"
PLUGIN, LLAVA = "plugin", "vllm_llava"


def save_random_checkpoint(preset: str, out_dir: Path) -> Path:
    """A random M3 pad checkpoint of a `llava.testing.PRESETS` shape, written in the on-disk format."""
    model = build_random_llava(preset, "pad")
    model.save_pretrained(out_dir)
    build_tiny_tokenizer(out_dir)
    tiny_image_processor(model.get_vision_tower().image_size).save_pretrained(out_dir)
    return out_dir


def prompt_for(template: str) -> str:
    conv = get_conv_template(template)
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{QUESTION}")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of `fn`: other jobs on the machine only ever add time."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


@contextmanager
def open_engine(path: Path, args: argparse.Namespace) -> Iterator[Any]:
    from vllm import LLM

    llm = LLM(
        model=str(path), dtype="float32", enforce_eager=not args.compile, seed=0, max_model_len=args.max_model_len
    )
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def prompt_source(llm: Any, prompt: str, engine: str) -> dict[str, Any]:
    """The prompt as a user sends it: text, unless the tokenizer loses `<image>` (M3-Shapes' word-level one).

    vLLM's LLaVA knows `<image>` as a token of its own; the plugin's checkpoint tokenizer must keep the
    text to be re-tokenized, else it gets our ids with its placeholder (`tokenizer_image_token`).
    """
    tokenizer = llm.get_tokenizer()
    if engine == LLAVA or DEFAULT_IMAGE_TOKEN in tokenizer.decode(tokenizer(prompt).input_ids):
        return {"prompt": prompt}
    placeholder = llm.renderer.get_mm_processor().info.placeholder_id
    return {"prompt_token_ids": tokenizer_image_token(prompt, tokenizer, image_token_index=placeholder)}


def rows_for(scales: list[int]) -> list[tuple[str, str, int | None]]:
    """(row name, engine, budget) for every row: the plugin at each budget, vLLM's LLaVA at its only one."""
    return [(f"{PLUGIN}@{s}", PLUGIN, s) for s in scales] + [(f"{LLAVA}@576", LLAVA, None)]


def requests_for(source: dict[str, Any], images: list[Image.Image], scale: int | None) -> list[dict[str, Any]]:
    kwargs = {} if scale is None else {"mm_processor_kwargs": {SCALE_KWARG: scale}}
    return [{**source, "multi_modal_data": {"image": image}, **kwargs} for image in images]


def measure_rows(
    engines: dict[str, Any], sources: dict[str, dict], image_sets: list[list[Image.Image]], args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Wall and CPU seconds per round for every row; round r uses image set r + 1 (set 0 is the warm-up's).

    The CPU seconds are this process's, all threads (the engines run in it): time spent waiting for a
    core that another job holds is not in them, so on a shared machine they vary less than wall time.
    """
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
    rows = rows_for(args.scales)
    for name, engine, scale in rows:
        engines[engine].generate(requests_for(sources[engine], image_sets[0], scale), params, use_tqdm=False)
    results: dict[str, dict[str, Any]] = {
        name: {"engine": engine, SCALE_KWARG: scale, "seconds": [], "cpu_seconds": []} for name, engine, scale in rows
    }
    for round_index in range(args.rounds):
        shift = round_index % len(rows)
        for name, engine, scale in rows[shift:] + rows[:shift]:
            batch = requests_for(sources[engine], image_sets[round_index + 1], scale)
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs = engines[engine].generate(batch, params, use_tqdm=False)
            results[name]["seconds"].append(time.perf_counter() - start)
            results[name]["cpu_seconds"].append(time.process_time() - cpu_start)
            results[name]["prompt_tokens"] = len(outputs[0].prompt_token_ids)
    for row in results.values():
        row["median_seconds"] = statistics.median(row["seconds"])
        row["requests_per_s"] = len(image_sets[0]) / row["median_seconds"]
        row["requests_per_s_fastest_round"] = len(image_sets[0]) / min(row["seconds"])
        row["median_cpu_seconds"] = statistics.median(row["cpu_seconds"])
    return results


def measure_processors(engines: dict[str, Any], images: list[Image.Image], repeats: int) -> dict[str, float]:
    """Seconds per image of each engine's multimodal processor (pixels only, no cache), alternating engines."""
    from vllm.utils.torch_utils import set_default_torch_num_threads

    kwargs = {PLUGIN: {SCALE_KWARG: 576}, LLAVA: {}}
    per_image: dict[str, list[float]] = {PLUGIN: [], LLAVA: []}
    with set_default_torch_num_threads():  # as vLLM's renderer runs the processor
        for image in images:
            for engine, llm in engines.items():
                processor = llm.renderer.get_mm_processor()
                items = processor.info.parse_mm_data({"image": [image]})
                per_image[engine].append(
                    timed(lambda: processor._apply_hf_processor_main(items, kwargs[engine]), repeats)
                )
    return {f"{engine} processor per image": min(times) for engine, times in per_image.items()}


def measure_prompt_ids(engines: dict[str, Any], sources: dict[str, dict], repeats: int) -> dict[str, float]:
    """Seconds per request of vLLM's tokenization and of the plugin's re-tokenization after it."""
    times: dict[str, float] = {}
    for engine, llm in engines.items():
        if "prompt" not in sources[engine]:
            continue
        tokenizer = llm.get_tokenizer()
        ids = tokenizer(sources[engine]["prompt"]).input_ids
        times[f"{engine} vLLM tokenization per request"] = timed(lambda: tokenizer(sources[engine]["prompt"]), repeats)
        if engine == PLUGIN:
            processor = llm.renderer.get_mm_processor()
            times[f"{PLUGIN} _postprocess_prompt per request"] = timed(
                lambda: processor._postprocess_prompt(ids), repeats
            )
    return times


def measure_encoders(
    engines: dict[str, Any], images: list[Image.Image], scales: list[int], repeats: int
) -> dict[str, float]:
    """Seconds per image of tower, projector and pooling on one batch of `images`, alternating engines."""
    processor = engines[PLUGIN].renderer.get_mm_processor()
    items = processor.info.parse_mm_data({"image": images})
    pixels = torch.cat(list(processor._apply_hf_processor_main(items, {SCALE_KWARG: 576})["pixel_values"]))
    parts = {PLUGIN: "mm_projector", LLAVA: "multi_modal_projector"}

    def encode(model: torch.nn.Module, engine: str) -> dict[str, float]:
        with torch.no_grad():
            tower = model.vision_tower
            features = tower(pixels.to(tower.dtype), feature_select_strategy="default")
            projector = getattr(model, parts[engine])
            result = {
                f"{engine} tower": timed(lambda: tower(pixels, feature_select_strategy="default"), repeats),
                f"{engine} projector": timed(lambda: projector(features), repeats),
            }
            if engine == PLUGIN:
                projected = projector(features)
                for scale in scales:
                    result[f"plugin pooling to {scale}"] = timed(lambda: pool_visual_tokens(projected, scale), repeats)
        return result

    times: dict[str, float] = {}
    for _ in range(2):  # twice, alternating, so neither engine always runs first
        for engine, llm in engines.items():
            for name, seconds in llm.apply_model(lambda model, engine=engine: encode(model, engine))[0].items():
                times[name] = min(times.get(name, float("inf")), seconds / len(images))
    return times


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Time of the plugin at 576 over vLLM's LLaVA: per round (same conditions) and of the fastest rounds."""
    plugin, llava = rows[f"{PLUGIN}@576"], rows[f"{LLAVA}@576"]
    per_round = [p / v for p, v in zip(plugin["seconds"], llava["seconds"])]
    cpu_per_round = [p / v for p, v in zip(plugin["cpu_seconds"], llava["cpu_seconds"])]
    result: dict[str, Any] = {
        "plugin@576 / vllm_llava@576 (time, median of rounds)": statistics.median(per_round),
        "plugin@576 / vllm_llava@576 (time, fastest rounds)": min(plugin["seconds"]) / min(llava["seconds"]),
        "plugin@576 / vllm_llava@576 (CPU time, median of rounds)": statistics.median(cpu_per_round),
        "plugin@576 / vllm_llava@576 (time, each round)": per_round,
        "plugin@576 / vllm_llava@576 (CPU time, each round)": cpu_per_round,
    }
    if f"{PLUGIN}@9" in rows:
        result["plugin@9 / plugin@576 (requests/s)"] = (
            rows[f"{PLUGIN}@9"]["requests_per_s"] / rows[f"{PLUGIN}@576"]["requests_per_s"]
        )
    return result


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if args.model in ("tiny", "small", "7b"):
        checkpoint = save_random_checkpoint(args.model, work / f"m3-{args.model}")
    else:
        checkpoint = Path(args.model)
    plain = save_plain_llava(checkpoint, work / "plain-llava")
    count = args.requests * (args.rounds + 1)
    records = shapes.generate_split(work / "shapes", "test", count, shapes.DEFAULT_SEEDS["test"])
    files = list(dict.fromkeys(r["image"] for r in records))  # several questions share an image
    images = [Image.open(work / "shapes" / name).convert("RGB") for name in files]
    image_sets = [images[i * args.requests : (i + 1) * args.requests] for i in range(args.rounds + 1)]
    load_before = os.getloadavg()
    with ExitStack() as stack:
        engines = {PLUGIN: stack.enter_context(open_engine(checkpoint, args))}
        engines[LLAVA] = stack.enter_context(open_engine(plain, args))
        prompt = prompt_for(args.template)
        sources = {engine: prompt_source(llm, prompt, engine) for engine, llm in engines.items()}
        rows = measure_rows(engines, sources, image_sets, args)
        parts = measure_processors(engines, image_sets[0][:8], args.part_repeats)
        parts |= measure_prompt_ids(engines, sources, args.part_repeats)
        parts |= measure_encoders(engines, image_sets[0][:8], args.scales, args.part_repeats)
    return {
        "model": args.model,
        "requests": args.requests,
        "rounds": args.rounds,
        "new_tokens": args.new_tokens,
        "compile": args.compile,
        "prompt_input": {engine: next(iter(source)) for engine, source in sources.items()},
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
        "ratios": ratios(rows),
        "parts_seconds": parts,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "| engine | visual tokens | prompt tokens | requests/s, median round | requests/s, fastest round "
        "| CPU s, median round |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["rows"].items():
        scale = row[SCALE_KWARG] or 576
        lines.append(
            f"| {name} | {scale} | {row['prompt_tokens']} | {row['requests_per_s']:.2f} "
            f"| {row['requests_per_s_fastest_round']:.2f} | {row['median_cpu_seconds']:.2f} |"
        )
    lines += ["", "| part | ms |", "|---|---:|"]
    lines += [f"| {name} | {seconds * 1e3:.3f} |" for name, seconds in report["parts_seconds"].items()]
    lines += [f"\n{name}: {value}" for name, value in report["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small", help="a preset (tiny, small, 7b) or an M3 pad checkpoint folder")
    parser.add_argument("--template", default="v1", help="conversation template of the prompt")
    parser.add_argument("--requests", type=int, default=8, help="requests sent at once, one image each")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--scales", type=lambda s: [int(v) for v in s.split(",")], default=[576, 144, 36, 9, 1])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; each runs every row once")
    parser.add_argument("--part-repeats", type=int, default=50, help="calls per part timing (the fastest counts)")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--compile", action="store_true", help="let vLLM compile the model (default: eager)")
    parser.add_argument("--out", default=None, help="write the JSON results here")
    args = parser.parse_args(argv)
    if 576 not in args.scales:
        parser.error("--scales must include 576 (the comparison with vLLM's LLaVA is at 576)")
    with tempfile.TemporaryDirectory() as work:
        report = run(args, Path(work))
    print(table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
