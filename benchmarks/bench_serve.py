"""Serving throughput and latency per visual-token budget, for each engine behind the model worker.

Starts `python -m llava.serve.model_worker --backend B` on 127.0.0.1 (no controller) for each backend
named, and sends each the same load: M3-Shapes questions, each with its own image, from `--concurrency`
clients streaming at once, greedy, at each budget and each `--new-tokens` limit. Reports requests/s,
generated tokens/s, latency and time-to-first-token (p50 / p95) as a markdown table and JSON, with the
machine's load average while each cell ran (the machine may be shared).

    python benchmarks/bench_serve.py                                   # tiny random model: hf one at a time vs batched
    .venv-vllm/bin/python benchmarks/bench_serve.py --model small --backend hf,vllm --requests 32 \\
        --json benchmarks/results/serve_small_cpu.json
    .venv-vllm/bin/python benchmarks/bench_serve.py --model playground/shapes-m3-tiny --backend hf,vllm

Backends: `hf` (our engine, batches of up to `--concurrency`), `hf-serial` (our engine one request at a
time, LLaVA's original worker), `vllm` (vLLM's engine in the worker: run the script in the vLLM
environment, `bash scripts/ci/vllm_env.sh` prints its python). `--model` is a preset of
`llava.testing.PRESETS` (a random pad checkpoint of that shape is written first, its answers made text)
or a checkpoint folder.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import get_conv_template, template_stop
from llava.generation import build_prompt
from llava.serve.args import DTYPES
from llava.serve.http import find_free_port

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("tiny", "small", "7b")
BACKENDS = ("hf", "hf-serial", "vllm")


@dataclass
class Cell:
    backend: str
    scale: int
    new_tokens: int
    visual_tokens: int
    prompt_tokens: float
    """Mean over the requests (the questions differ in length)."""
    requests: int
    concurrency: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    """Generated tokens per second (answers that end early generate fewer)."""
    latency_p50_ms: float
    latency_p95_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    load_average: float
    """The machine's 1-minute load average at the end of the cell (its cores: os.cpu_count())."""


@dataclass
class Request:
    prompt: str
    image: str
    """Base64 PNG."""


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def batched(items: list[Request], size: int) -> list[list[Request]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def shapes_requests(work: Path, count: int, conv_mode: str) -> list[Request]:
    """`count` M3-Shapes test questions, each with its own image, as prompts in the worker's template."""
    from llava.data import shapes

    records = shapes.generate_split(work / "shapes", "test", count, shapes.DEFAULT_SEEDS["test"])
    chosen = list({record["image"]: record for record in records}.values())[:count]
    requests = []
    for record in chosen:
        question = record["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        image = base64.b64encode((work / "shapes" / record["image"]).read_bytes()).decode()
        requests.append(Request(build_prompt(conv_mode, question, 1), image))
    return requests


async def one_request(client: httpx.AsyncClient, body: dict) -> tuple[float, float, dict]:
    """(latency s, time to the first chunk s, final chunk) of one streamed generation."""
    start = time.perf_counter()
    first = None
    buffer = b""
    async with client.stream("POST", "/worker_generate_stream", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for data in response.aiter_bytes():
            if first is None:
                first = time.perf_counter() - start
            buffer += data
    final = json.loads([part for part in buffer.split(b"\0") if part][-1])
    if final.get("error_code"):
        raise RuntimeError(f"generation failed: {final['text'][:300]}")
    return time.perf_counter() - start, first or 0.0, final


async def run_load(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[tuple]]:
    """All `bodies` with at most `concurrency` in flight; (seconds, results)."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:

        async def limited(body: dict) -> tuple:
            async with limit:
                return await one_request(client, body)

        start = time.perf_counter()
        results = await asyncio.gather(*(limited(body) for body in bodies))
        return time.perf_counter() - start, results


def worker_command(backend: str, model_path: str, port: int, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "llava.serve.model_worker", "--model-path", model_path, "--port", str(port)]
    command += ["--no-register", "--log-level", "warning", "--max-new-tokens-limit", str(max(args.new_tokens))]
    if backend == "vllm":
        return [*command, "--backend", "vllm", "--dtype", args.dtype, "--seed", "0", *shlex.split(args.vllm_flags)]
    batch = 1 if backend == "hf-serial" else args.concurrency
    return [*command, "--device", args.device, "--dtype", args.dtype, "--limit-model-concurrency", str(batch)]


def vllm_env() -> dict[str, str]:
    """The vLLM settings of the worker's environment (this process's values where set)."""
    defaults = {
        # GiB: 16 requests of 650 tokens of the small preset take 2.2 (so none waits for cache space).
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        # One engine on the CPU: the model runs in the engine-core process. Otherwise vLLM's CPU platform
        # runs it in a further process, and the two spin-wait for each other on shared memory, which took
        # about a third of the CPU samples on the 2-core machine (docs/Serving.md).
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    return {name: os.environ.get(name, value) for name, value in defaults.items()}


def start_worker(backend: str, model_path: str, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """The worker in its own process (so the load generator does not share its GIL), up and answering."""
    port = find_free_port()
    command = worker_command(backend, model_path, port, args)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.update(vllm_env())
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while True:
        try:
            httpx.post(f"{url}/worker_get_status", timeout=2).raise_for_status()
            return process, url
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the worker did not start: {shlex.join(command)}") from None
            time.sleep(0.5)


def measure_cell(
    backend: str, url: str, requests: list[Request], stop: str | None, scale: int, new_tokens: int, concurrency: int
) -> Cell:
    """One budget and token limit: every request once, `concurrency` at a time."""
    bodies = [
        {
            "prompt": request.prompt,
            "images": [request.image],
            "temperature": 0.0,
            "max_new_tokens": new_tokens,
            "stop": stop,
            "matryoshka_vis_token_scale": scale,
        }
        for request in requests
    ]
    seconds, results = asyncio.run(run_load(url, bodies, concurrency))
    latencies = [r[0] * 1000 for r in results]
    ttfts = [r[1] * 1000 for r in results]
    usages = [r[2]["usage"] for r in results]
    return Cell(
        backend=backend,
        scale=scale,
        new_tokens=new_tokens,
        visual_tokens=usages[0]["visual_tokens"],
        prompt_tokens=round(sum(u["prompt_tokens"] for u in usages) / len(usages), 1),
        requests=len(bodies),
        concurrency=concurrency,
        seconds=round(seconds, 3),
        requests_per_s=round(len(bodies) / seconds, 3),
        tokens_per_s=round(sum(u["completion_tokens"] for u in usages) / seconds, 1),
        latency_p50_ms=round(percentile(latencies, 50), 1),
        latency_p95_ms=round(percentile(latencies, 95), 1),
        ttft_p50_ms=round(percentile(ttfts, 50), 1),
        ttft_p95_ms=round(percentile(ttfts, 95), 1),
        load_average=round(os.getloadavg()[0], 2),
    )


def measure(model_path: str, work: Path, args: argparse.Namespace) -> list[Cell]:
    """Every cell on every backend. All workers run at once and take turns cell by cell, so that on a
    shared machine each backend's cell of a budget meets the same neighbours; each cell is the fastest
    of `--repeats` runs."""
    workers: dict[str, tuple[subprocess.Popen, str]] = {}
    cells = []
    try:
        for backend in args.backend:
            workers[backend] = start_worker(backend, model_path, args)
        first = next(iter(workers.values()))[1]
        conv_mode = httpx.post(f"{first}/worker_get_status", timeout=10).json()["matryoshka"]["conv_template"]
        stop = template_stop(get_conv_template(conv_mode))
        # Every run of every cell gets images (and questions) of its own, as real traffic does: a vLLM engine
        # would otherwise answer repeats from its prefix and encoder caches.
        runs_needed = len(args.new_tokens) * len(args.scales) * len(workers) * args.repeats + 1
        requests = iter(batched(shapes_requests(work, args.requests * runs_needed, conv_mode), args.requests))
        warm_up = next(requests)[:2]
        for backend, (_, url) in workers.items():  # first requests pay one-time costs (allocation, kernels)
            measure_cell(backend, url, warm_up, stop, args.scales[0], 2, args.concurrency)
        for new_tokens in args.new_tokens:
            for scale in args.scales:
                for backend, (_, url) in workers.items():
                    runs = [
                        measure_cell(backend, url, next(requests), stop, scale, new_tokens, args.concurrency)
                        for _ in range(args.repeats)
                    ]
                    cell = max(runs, key=lambda run: run.requests_per_s)
                    cells.append(cell)
                    print(
                        f"  {backend:>9} scale {scale:>3} new {new_tokens:>3}: {cell.requests_per_s:7.3f} req/s, "
                        f"p50 {cell.latency_p50_ms:.0f} ms, TTFT p50 {cell.ttft_p50_ms:.0f} ms, "
                        f"load {cell.load_average}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for process, _ in workers.values():
            process.terminate()
            process.wait(timeout=120)
    return cells


def markdown(cells: Sequence[Cell]) -> str:
    header = (
        "| backend | new tokens | scale | prompt tokens | req/s | gen tok/s | latency p50 / p95 (ms) "
        "| TTFT p50 / p95 (ms) | load |"
    )
    lines = [header, "|" + "---|" * 9]
    for c in cells:
        lines.append(
            f"| {c.backend} | {c.new_tokens} | {c.scale} | {c.prompt_tokens:.0f} | {c.requests_per_s:.2f} | "
            f"{c.tokens_per_s:.0f} | {c.latency_p50_ms:.0f} / {c.latency_p95_ms:.0f} | "
            f"{c.ttft_p50_ms:.0f} / {c.ttft_p95_ms:.0f} | {c.load_average} |"
        )
    return "\n".join(lines)


def ratios(cells: Sequence[Cell]) -> dict[str, float]:
    """The targets' ratios, where the run has both sides: each backend over `hf`, and budget 9 over 576."""
    rate = {(c.backend, c.scale, c.new_tokens): c.requests_per_s for c in cells}
    summary = {}
    for (backend, scale, new_tokens), value in rate.items():
        if backend != "hf" and ("hf", scale, new_tokens) in rate:
            summary[f"{backend}/hf req/s at {scale}, {new_tokens} new"] = round(
                value / rate["hf", scale, new_tokens], 2
            )
        if scale == 9 and (backend, 576, new_tokens) in rate:
            summary[f"{backend}: 9/576 req/s, {new_tokens} new"] = round(value / rate[backend, 576, new_tokens], 2)
    return summary


def checkpoint_for(model: str, work: Path) -> str:
    """The checkpoint folder to serve: `model` itself, or a random pad checkpoint of a preset shape whose
    greedy answers are text (`silence_non_text_tokens`: so that they stream, and time to first token means
    what it says)."""
    if model not in PRESETS:
        return model
    from llava.testing import build_random_llava, build_tiny_tokenizer, silence_non_text_tokens, tiny_image_processor

    out = work / f"llava-v1.5-{model}-m3"
    random_model = build_random_llava(model, "pad")
    silence_non_text_tokens(random_model.lm_head.weight, build_tiny_tokenizer(out))
    random_model.save_pretrained(out)
    tiny_image_processor(random_model.get_vision_tower().image_size).save_pretrained(out)
    return str(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(value) for value in text.split(",")]

    def backends(text: str) -> list[str]:
        names = text.split(",")
        if unknown := sorted(set(names) - set(BACKENDS)):
            raise argparse.ArgumentTypeError(f"unknown backends {unknown}; choose from {list(BACKENDS)}")
        return names

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help=f"a preset {PRESETS} or a checkpoint folder")
    parser.add_argument("--backend", type=backends, default=["hf-serial", "hf"], help="comma-separated")
    parser.add_argument("--device", default="cpu", help="our engine's device: cpu, cuda or mps")
    parser.add_argument("--scales", type=ints, default=[576, 144, 36, 9, 1])
    parser.add_argument("--new-tokens", type=ints, default=[16, 64], help="max_new_tokens of each request")
    parser.add_argument("--requests", type=int, default=48, help="requests per cell, each its own image and question")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight from the clients")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell; the fastest is reported")
    parser.add_argument(
        "--dtype",
        choices=[dtype for dtype in DTYPES if dtype != "auto"],  # "auto" differs between the engines
        default="float32",
        help="every backend's dtype (the worker's --dtype)",
    )
    parser.add_argument("--vllm-flags", default="", help='vLLM engine flags besides --dtype, e.g. "--enforce-eager"')
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of the worker (default: 1 for the tiny model, which only loses to thread sync; "
        "else every core)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    args.threads = args.torch_threads or (1 if args.model == "tiny" else os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        model_path = checkpoint_for(args.model, Path(tmp))
        cells = measure(model_path, Path(tmp), args)
    result = {
        "model": args.model,
        "backends": args.backend,
        "device": args.device,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "torch_threads": args.threads,
        "dtype": args.dtype,
        "cpu_count": os.cpu_count(),
        "vllm_flags": args.vllm_flags,
        "vllm_env": vllm_env(),
        "command": shlex.join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "cells": [asdict(c) for c in cells],
        "ratios": ratios(cells),
    }
    print(markdown(cells))
    print(json.dumps(result["ratios"], indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
