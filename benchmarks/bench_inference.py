"""Time to first token, decode speed, KV-cache bytes and prefill memory at every M3 budget.

Runs a random model of a preset shape (llava.testing.PRESETS) side by side with transformers'
own `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` holding the same
weights (at 576 tokens, the only budget transformers has), so every ratio comes from one run.

    python benchmarks/bench_inference.py --preset small --batch-sizes 1 --out bench_inference.json
    python benchmarks/bench_inference.py --preset 7b --device cuda --dtype float16
    python benchmarks/bench_inference.py --preset small --batch-sizes 1 --cpu-weight-prepack

Prints a markdown table; writes JSON with every measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import StoppingCriteria, StoppingCriteriaList

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.convert_hf import to_hf_llava
from llava.model.cpu_packing import PACK_MIN_WEIGHTS, prepare_for_inference
from llava.testing import build_random_llava

SCALES = [576, 144, 36, 9, 1]
QUESTION_TOKENS = 32  # a typical short VQA question plus template


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repeats: int) -> float:
    """Fastest of `repeats` calls after one warm-up call.

    The minimum, not the mean: on a shared machine noise only ever adds time.
    """
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def timed_together(fns: list[Callable[[], Any]], device: str, repeats: int) -> list[float]:
    """Fastest time of each function, calling them in turn so machine load hits them alike."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def peak_memory(fn: Callable[[], Any], device: str) -> int:
    """Peak bytes allocated by `fn` beyond what was allocated before it (weights excluded)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    # On CPU, replay the profiler's allocation events in order and keep the high-water mark.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.end)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def cache_bytes(cache: Any) -> int:
    total = 0
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


class TokenClock(StoppingCriteria):
    """Never stops generation; notes the time each new token is ready (generate asks its stopping
    criteria once per step, the first token included)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        synchronize(self.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def timed_decode(generate: Callable[..., Any], tokens: int, device: str, repeats: int) -> float | None:
    """Decode speed in steps per second: (tokens - 1) steps after the first token, timed inside one
    `generate` call (first token ready → last token ready), fastest of `repeats` calls after a
    warm-up. Within one call the prefill's noise does not enter. None with fewer than 2 tokens."""
    if tokens < 2:
        return None
    best = float("inf")
    for i in range(repeats + 1):
        clock = TokenClock(device)
        generate(tokens, StoppingCriteriaList([clock]))
        if len(clock.times) != tokens:
            raise RuntimeError(f"expected {tokens} timed steps, got {len(clock.times)}")
        if i:  # the first call warms up
            best = min(best, clock.times[-1] - clock.times[0])
    return (tokens - 1) / best


def ratio_or_none(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def make_inputs(model: torch.nn.Module, aspect: str, batch: int, device: str, dtype: torch.dtype):
    """Random pixels and a prompt of `QUESTION_TOKENS` text tokens around one image placeholder."""
    crop = model.get_vision_tower().image_size
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(10, min(model.config.vocab_size, 500), (QUESTION_TOKENS,), generator=generator).tolist()
    ids = torch.tensor([text[:4] + [IMAGE_TOKEN_INDEX] + text[4:]] * batch, device=device)
    if aspect == "pad":
        pixels = torch.randn(batch, 3, crop, crop, generator=generator).to(device, dtype)
        sizes = [(crop, crop)] * batch
    else:  # a square image on the 2x2 grid: base + 4 crops
        pixels = torch.randn(batch, 5, 3, crop, crop, generator=generator).to(device, dtype)
        sizes = [(2 * crop, 2 * crop)] * batch
    return ids, pixels, sizes


def bench_m3(model, aspect, batch, scale, args) -> dict[str, float]:
    ids, pixels, sizes = make_inputs(model, aspect, batch, args.device, args.dtype)
    generate = m3_generator(model, aspect, batch, scale, args)
    with torch.inference_mode():
        t_vision = timed(lambda: model.encode_images(pixels), args.device, args.repeats)
        ttft = timed(lambda: generate(1), args.device, args.repeats)
        steps_per_s = timed_decode(generate, args.new_tokens, args.device, args.repeats)
        encoded = model.encode_images(pixels)

        def prefill():
            return model(
                input_ids=ids,
                images=encoded,
                image_sizes=sizes,
                matryoshka_vis_token_scale=scale,
                use_cache=True,
                logits_to_keep=1,
            )

        out = prefill()
        kv = cache_bytes(out.cache if hasattr(out, "cache") else out.past_key_values)
        mem = peak_memory(prefill, args.device)
    prompt_len = QUESTION_TOKENS + model.num_visual_tokens(scale, sizes[0])
    return {
        "prompt_tokens": prompt_len,
        "t_vision_s": t_vision,
        "ttft_s": ttft,
        "decode_tok_s": None if steps_per_s is None else batch * steps_per_s,
        "kv_cache_bytes": kv,
        "prefill_peak_bytes": mem,
    }


def hf_generator(hf, model, aspect, batch, args) -> Callable[[int], Any]:
    """transformers' LLaVA at the full budget: the image token repeated once per visual token."""
    ids, pixels, sizes = make_inputs(model, aspect, batch, args.device, args.dtype)
    image_token = 0
    n_visual = model.num_visual_tokens(576, sizes[0])
    row = ids[0].tolist()
    pos = row.index(IMAGE_TOKEN_INDEX)
    hf_ids = torch.tensor([row[:pos] + [image_token] * n_visual + row[pos + 1 :]] * batch, device=args.device)
    extra = {"image_sizes": torch.tensor([[h, w] for w, h in sizes], device=args.device)} if aspect == "anyres" else {}

    def generate(n: int, stopping_criteria: StoppingCriteriaList | None = None):
        with torch.inference_mode():
            return hf.generate(
                input_ids=hf_ids,
                pixel_values=pixels,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                use_cache=True,
                stopping_criteria=stopping_criteria,
                **extra,
            )

    return generate


def m3_generator(model, aspect, batch, scale, args) -> Callable[[int], Any]:
    ids, pixels, sizes = make_inputs(model, aspect, batch, args.device, args.dtype)

    def generate(n: int, stopping_criteria: StoppingCriteriaList | None = None):
        with torch.inference_mode():
            return model.generate(
                ids,
                images=pixels,
                image_sizes=sizes,
                matryoshka_vis_token_scale=scale,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                use_cache=True,
                stopping_criteria=stopping_criteria,
            )

    return generate


def compare_with_transformers(hf, model, aspect, batch, args) -> dict[str, float]:
    """TTFT and decode speed of M3 and transformers at 576 tokens; TTFT timed alternately."""
    ours, theirs = m3_generator(model, aspect, batch, 576, args), hf_generator(hf, model, aspect, batch, args)
    ttft_ours, ttft_hf = timed_together([lambda: ours(1), lambda: theirs(1)], args.device, args.repeats)
    decode = {}
    for name, generate in (("m3", ours), ("hf", theirs)):
        steps_per_s = timed_decode(generate, args.new_tokens, args.device, args.repeats)
        decode[name] = None if steps_per_s is None else batch * steps_per_s
    return {
        "m3_ttft_s_at_576": ttft_ours,
        "hf_ttft_s_at_576": ttft_hf,
        "m3_decode_tok_s_at_576": decode["m3"],
        "hf_decode_tok_s_at_576": decode["hf"],
    }


def environment(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Where a benchmark ran: device and dtype, CPU threads, the CPU's or GPU's name, torch's version."""
    return {
        "device": device,
        "dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "preset": args.preset,
        **environment(args.device, args.dtype),
        "rows": [],
        "comparisons": [],
    }
    for aspect in args.aspects:
        model = build_random_llava(args.preset, aspect, args.device, args.dtype)
        hf = to_hf_llava(model, image_token_index=0)
        for batch in args.batch_sizes:
            comparison = compare_with_transformers(hf, model, aspect, batch, args)
            results["comparisons"].append({"aspect": aspect, "batch": batch, **comparison})
            for scale in args.scales:
                row = {"aspect": aspect, "batch": batch, "scale": scale, **bench_m3(model, aspect, batch, scale, args)}
                results["rows"].append(row)
                print(f"{aspect} b={batch} s={scale}: ttft {row['ttft_s']:.4f}s", flush=True)
        if args.compile:
            results.setdefault("compiled", []).extend(bench_compiled(model, aspect, results["rows"], args))
        if args.cpu_weight_prepack:
            # transformers' copy keeps the plain weights, for the packed model's own comparison.
            packed_rows, packed_comparisons = bench_prepacked(model, hf, aspect, results["rows"], args)
            results.setdefault("prepacked", []).extend(packed_rows)
            results.setdefault("prepacked_comparisons", []).extend(packed_comparisons)
        del hf, model
    return results


def bench_compiled(model, aspect: str, eager_rows: list[dict], args: argparse.Namespace) -> list[dict[str, Any]]:
    """After the eager rows: `compile_vision()` the same model and time vision and TTFT again."""
    model.compile_vision()
    out = []
    for batch in args.batch_sizes:
        ids, pixels, sizes = make_inputs(model, aspect, batch, args.device, args.dtype)
        with torch.inference_mode():
            start = time.perf_counter()
            model.encode_images(pixels)  # compiles for this crop count
            compile_s = time.perf_counter() - start
            t_vision = timed(lambda: model.encode_images(pixels), args.device, args.repeats)
        for scale in args.scales:
            eager = next(r for r in eager_rows if (r["aspect"], r["batch"], r["scale"]) == (aspect, batch, scale))
            generate = m3_generator(model, aspect, batch, scale, args)  # inputs built outside the timing
            ttft = timed(lambda: generate(1), args.device, args.repeats)
            out.append(
                {
                    "aspect": aspect,
                    "batch": batch,
                    "scale": scale,
                    "first_call_s": compile_s,
                    "t_vision_s": t_vision,
                    "ttft_s": ttft,
                    "vision_speedup": eager["t_vision_s"] / t_vision,
                    "ttft_speedup": eager["ttft_s"] / ttft,
                }
            )
            print(f"compiled {aspect} b={batch} s={scale}: ttft {ttft:.4f}s", flush=True)
    return out


def ratios(results: dict[str, Any], rows: str = "rows", comparisons: str = "comparisons") -> list[dict[str, Any]]:
    """Per (aspect, batch): the issue's target ratios, from this one run."""
    versus_by_key = {(c["aspect"], c["batch"]): c for c in results[comparisons]}
    out = []
    for (aspect, batch), entry in scaling_ratios(results[rows]).items():
        versus = versus_by_key[(aspect, batch)]
        out.append(
            {
                "aspect": aspect,
                "batch": batch,
                "ttft_ratio_vs_transformers_576": versus["m3_ttft_s_at_576"] / versus["hf_ttft_s_at_576"],
                "decode_speed_ratio_vs_transformers_576": ratio_or_none(
                    versus["m3_decode_tok_s_at_576"], versus["hf_decode_tok_s_at_576"]
                ),
                **entry,
            }
        )
    return out


def scaling_ratios(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    """Per (aspect, batch): how the after-tower TTFT, KV cache and prefill peak fall from 576 to 9 and 1."""
    groups: dict[tuple[str, int], dict[int, dict]] = {}
    for row in rows:
        groups.setdefault((row["aspect"], row["batch"]), {})[row["scale"]] = row
    out = {}
    for key, by_scale in groups.items():
        if 576 not in by_scale:
            continue
        full = by_scale[576]
        entry: dict[str, float] = {}
        for small in (9, 1):
            if small in by_scale:
                r = by_scale[small]
                entry[f"non_vision_ttft_ratio_{small}_vs_576"] = (r["ttft_s"] - r["t_vision_s"]) / (
                    full["ttft_s"] - full["t_vision_s"]
                )
                entry[f"prompt_ratio_{small}_vs_576"] = r["prompt_tokens"] / full["prompt_tokens"]
                entry[f"kv_ratio_{small}_vs_576"] = r["kv_cache_bytes"] / full["kv_cache_bytes"]
                entry[f"peak_ratio_{small}_vs_576"] = r["prefill_peak_bytes"] / full["prefill_peak_bytes"]
        out[key] = entry
    return out


def bench_prepacked(
    model, hf, aspect: str, eager_rows: list[dict], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """After the eager rows: `prepare_for_inference(model)`, as every inference entry point calls it after
    loading (on the CPU it packs the linear layers of `PACK_MIN_WEIGHTS` weights or more for oneDNN; every
    layer with `--pack-every-layer`), compare it with transformers at 576 again and time every budget again."""
    packed_layers = prepare_for_inference(model, True if args.pack_every_layer else None)
    total = packed_layers + sum(type(m) is torch.nn.Linear for m in model.modules())
    print(f"packed {packed_layers} of {total} linear layers", flush=True)
    out, comparisons = [], []
    for batch in args.batch_sizes:
        comparison = compare_with_transformers(hf, model, aspect, batch, args)
        comparisons.append({"aspect": aspect, "batch": batch, "packed_layers": packed_layers, **comparison})
        for scale in args.scales:
            eager = next(r for r in eager_rows if (r["aspect"], r["batch"], r["scale"]) == (aspect, batch, scale))
            row = {"aspect": aspect, "batch": batch, "scale": scale, **bench_m3(model, aspect, batch, scale, args)}
            row["ttft_speedup"] = eager["ttft_s"] / row["ttft_s"]
            row["decode_speedup"] = ratio_or_none(row["decode_tok_s"], eager["decode_tok_s"])
            out.append(row)
            print(f"prepacked {aspect} b={batch} s={scale}: ttft {row['ttft_s']:.4f}s", flush=True)
    return out, comparisons


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"preset `{results['preset']}` on {results['device']} ({results['cuda_device'] or results['machine']}, "
        f"{results['threads']} threads, {results['dtype']}, torch {results['torch']})",
        "",
        "| aspect | batch | scale | prompt tokens | vision s | TTFT s | decode tok/s | KV cache MiB "
        "| prefill peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['aspect']} | {r['batch']} | {r['scale']} | {r['prompt_tokens']} | {r['t_vision_s']:.4f} "
            f"| {r['ttft_s']:.4f} | {fmt(r['decode_tok_s'], '.1f')} "
            f"| {r['kv_cache_bytes'] / 2**20:.2f} | {r['prefill_peak_bytes'] / 2**20:.2f} |"
        )
    lines += ["", "At 576 tokens, timed alternately with transformers' own class on the same weights:", ""]
    lines += comparison_table(results["comparisons"])
    lines += ratio_table(results["ratios"], "ratio")
    if results.get("compiled"):
        lines += [
            "",
            "After `compile_vision()` (torch.compile of tower + projector), same model, same run:",
            "",
            "| aspect | batch | scale | first call s | vision s | TTFT s | vision speed-up | TTFT speed-up |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["compiled"]:
            lines.append(
                f"| {r['aspect']} | {r['batch']} | {r['scale']} | {r['first_call_s']:.1f} | {r['t_vision_s']:.4f} "
                f"| {r['ttft_s']:.4f} | {r['vision_speedup']:.2f} | {r['ttft_speedup']:.2f} |"
            )
    if results.get("prepacked"):
        lines += [
            "",
            "After `prepare_for_inference()` (oneDNN-packed linear layers, `cpu_weight_prepack`), same model, same run:",
            "",
            "| aspect | batch | scale | vision s | TTFT s | decode tok/s | TTFT speed-up | decode speed-up |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["prepacked"]:
            lines.append(
                f"| {r['aspect']} | {r['batch']} | {r['scale']} | {r['t_vision_s']:.4f} | {r['ttft_s']:.4f} "
                f"| {fmt(r['decode_tok_s'], '.1f')} | {r['ttft_speedup']:.2f} | {fmt(r['decode_speedup'], '.2f')} |"
            )
        lines += ["", "Packed M3 against transformers (plain weights) at 576 tokens:", ""]
        lines += comparison_table(results["prepacked_comparisons"])
        lines += ratio_table(results["prepacked_ratios"], "ratio (prepacked)")
    return "\n".join(lines)


def ratio_table(entries: list[dict[str, Any]], header: str) -> list[str]:
    lines = ["", f"| aspect | batch | {header} | value |", "|---|---|---|---|"]
    for entry in entries:
        for key, value in entry.items():
            if key not in ("aspect", "batch"):
                lines.append(f"| {entry['aspect']} | {entry['batch']} | {key} | {fmt(value, '.3f')} |")
    return lines


def comparison_table(comparisons: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| aspect | batch | M3 TTFT s | transformers TTFT s | M3 decode tok/s | transformers decode tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c['aspect']} | {c['batch']} | {c['m3_ttft_s_at_576']:.4f} | {c['hf_ttft_s_at_576']:.4f} "
            f"| {fmt(c['m3_decode_tok_s_at_576'], '.1f')} | {fmt(c['hf_decode_tok_s_at_576'], '.1f')} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "7b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) / float16 / bfloat16")
    parser.add_argument("--aspects", default="pad,anyres")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--scales", default=",".join(map(str, SCALES)))
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=32,
        help="tokens per timed generation; decode speed is timed inside each call, first token to last",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--out", default=None, help="write the JSON results here")
    parser.add_argument(
        "--compile", action="store_true", help="also time the same model after compile_vision() (torch.compile)"
    )
    parser.add_argument(
        "--cpu-weight-prepack",
        action="store_true",
        help="also time the same model after prepare_for_inference() (oneDNN-packed linear layers; CPU, float32), "
        f"as the inference commands run it on the CPU (layers of {PACK_MIN_WEIGHTS} weights or more)",
    )
    parser.add_argument(
        "--pack-every-layer",
        action="store_true",
        help="with --cpu-weight-prepack: pack every linear layer (prepare_for_inference(model, cpu_weight_prepack=True))",
    )
    args = parser.parse_args(argv)
    if args.cpu_weight_prepack and (args.device != "cpu" or args.dtype not in (None, "float32")):
        parser.error("--cpu-weight-prepack packs float32 weights for the CPU (use --device cpu, float32)")
    args.aspects = args.aspects.split(",")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.scales = [int(s) for s in args.scales.split(",")]
    args.dtype = (
        getattr(torch, args.dtype) if args.dtype else (torch.float32 if args.device == "cpu" else torch.float16)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args)
    results["ratios"] = ratios(results)
    if results.get("prepacked"):
        results["prepacked_ratios"] = ratios(results, "prepacked", "prepacked_comparisons")
    print(markdown(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
