"""Serving throughput and latency per visual-token budget: one request at a time vs batched.

Starts a model worker (`python -m llava.serve.model_worker` on 127.0.0.1, no controller), sends the same load of
concurrent streaming requests to it once with batching off (`--limit-model-concurrency 1`: the seed's
one-at-a-time semaphore) and once with batches of `--batch-size`, for each scale, and reports
requests/s, generated tokens/s, latency and time-to-first-token percentiles as a markdown table
and JSON.

    python benchmarks/bench_serve.py                        # tiny random model on CPU (a few seconds per cell)
    python benchmarks/bench_serve.py --model-path mucai/llava-v1.5-7b-m3 --device cuda --requests 128

The tiny model measures the serving machinery (HTTP, batching, scheduling), not a real model's compute.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from PIL import Image

from llava.serve.http import find_free_port

REPO = Path(__file__).resolve().parents[1]

PROMPT = "USER: <image>\nWhat is in the image? Describe it. ASSISTANT:"


@dataclass
class Cell:
    mode: str
    scale: int
    visual_tokens: int
    requests: int
    concurrency: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    largest_batch: int


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def test_image(size: int) -> str:
    image = Image.new("RGB", (size, size), (240, 240, 240))
    for x in range(size // 4, size // 2):
        for y in range(size // 4, size // 2):
            image.putpixel((x, y), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def one_request(client: httpx.AsyncClient, payload: dict) -> tuple[float, float, dict]:
    """(latency s, time to first token s, final chunk) of one streamed generation."""
    start = time.perf_counter()
    first = None
    buffer = b""
    async with client.stream("POST", "/worker_generate_stream", json=payload) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for data in response.aiter_bytes():
            if first is None:
                first = time.perf_counter() - start
            buffer += data
    chunks = [json.loads(part) for part in buffer.split(b"\0") if part]
    return time.perf_counter() - start, first or 0.0, chunks[-1]


async def run_load(url: str, payload: dict, requests: int, concurrency: int) -> tuple[float, list[tuple]]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def limited() -> tuple:
            async with limit:
                return await one_request(client, payload)

        await asyncio.gather(*(one_request(client, payload) for _ in range(min(2, requests))))  # warm-up
        start = time.perf_counter()
        results = await asyncio.gather(*(limited() for _ in range(requests)))
        return time.perf_counter() - start, results


def start_worker(model_path: str, device: str, batch_size: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    """`python -m llava.serve.model_worker` in its own process (so the load generator does not share its GIL)."""
    port = find_free_port()
    command = [
        sys.executable,
        "-m",
        "llava.serve.model_worker",
        "--model-path",
        model_path,
        "--device",
        device,
        "--port",
        str(port),
        "--no-register",
        "--limit-model-concurrency",
        str(batch_size),
        "--log-level",
        "warning",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            httpx.post(f"{url}/worker_get_status", timeout=2).raise_for_status()
            return process, url
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the worker did not start: {' '.join(command)}") from None
            time.sleep(0.2)


def measure(mode: str, batch_size: int, args: argparse.Namespace, model_path: str, image: str) -> list[Cell]:
    process, url = start_worker(model_path, args.device, batch_size, args.threads)
    cells = []
    try:
        for scale in args.scales:
            payload = {
                "prompt": PROMPT,
                "images": [image],
                "temperature": 0.0,
                "max_new_tokens": args.max_new_tokens,
                "matryoshka_vis_token_scale": scale,
            }
            # Best of --repeats: on a shared machine the slowest runs measure the neighbours, not the server.
            runs = [asyncio.run(run_load(url, payload, args.requests, args.concurrency)) for _ in range(args.repeats)]
            seconds, results = min(runs, key=lambda run: run[0])
            latencies = [r[0] * 1000 for r in results]
            ttfts = [r[1] * 1000 for r in results]
            tokens = sum(r[2]["usage"]["completion_tokens"] for r in results)
            status = httpx.post(f"{url}/worker_get_status", timeout=10).json()
            cell = Cell(
                mode=mode,
                scale=scale,
                visual_tokens=results[0][2]["usage"]["visual_tokens"],
                requests=args.requests,
                concurrency=args.concurrency,
                seconds=round(seconds, 3),
                requests_per_s=round(args.requests / seconds, 2),
                tokens_per_s=round(tokens / seconds, 1),
                latency_p50_ms=round(percentile(latencies, 50), 1),
                latency_p90_ms=round(percentile(latencies, 90), 1),
                latency_p99_ms=round(percentile(latencies, 99), 1),
                ttft_p50_ms=round(percentile(ttfts, 50), 1),
                ttft_p90_ms=round(percentile(ttfts, 90), 1),
                largest_batch=status["largest_batch"],
            )
            cells.append(cell)
            print(
                f"  {mode:>14} scale {scale:>3}: {cell.requests_per_s:7.2f} req/s, p50 {cell.latency_p50_ms} ms",
                file=sys.stderr,
                flush=True,
            )
    finally:
        process.terminate()
        process.wait(timeout=30)
    return cells


def markdown(cells: Sequence[Cell]) -> str:
    header = (
        "| mode | scale | visual tokens | req/s | gen tok/s | latency p50 / p90 / p99 (ms) | TTFT p50 / p90 (ms) "
        "| largest batch |"
    )
    lines = [header, "|" + "---|" * 8]
    for c in cells:
        lines.append(
            f"| {c.mode} | {c.scale} | {c.visual_tokens} | {c.requests_per_s:.2f} | {c.tokens_per_s:.0f} | "
            f"{c.latency_p50_ms:.0f} / {c.latency_p90_ms:.0f} / {c.latency_p99_ms:.0f} | "
            f"{c.ttft_p50_ms:.0f} / {c.ttft_p90_ms:.0f} | {c.largest_batch} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default=None, help="checkpoint (default: a tiny random one built on the fly)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    parser.add_argument("--scales", type=lambda s: [int(x) for x in s.split(",")], default=[1, 9, 36, 144, 576])
    parser.add_argument("--requests", type=int, default=48, help="requests per cell")
    parser.add_argument("--repeats", type=int, default=2, help="runs per cell; the fastest is reported")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight from the client")
    parser.add_argument("--batch-size", type=int, default=16, help="the batched worker's --limit-model-concurrency")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="a short chat answer")
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on cpu, where a tiny model only loses to thread sync)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.threads = args.torch_threads or (1 if args.device == "cpu" else None)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model_path
        if model_path is None:
            from llava.testing import build_tiny_llava

            model_path = str(
                build_tiny_llava(Path(tmp) / "llava-v1.5-tiny-m3", matryoshka_vis_token_scale=[576, 144, 36, 9, 1])
            )
        image = test_image(args.image_size)
        cells = measure("one-at-a-time", 1, args, model_path, image)
        cells += measure("batched", args.batch_size, args, model_path, image)
    by_key = {(c.mode, c.scale): c for c in cells}
    summary = {}
    if ("batched", 9) in by_key and ("one-at-a-time", 576) in by_key:
        ratio = by_key["batched", 9].requests_per_s / by_key["one-at-a-time", 576].requests_per_s
        summary["batched_9_over_one_at_a_time_576"] = round(ratio, 2)
    for scale in args.scales:
        summary[f"batching_speedup_at_{scale}"] = round(
            by_key["batched", scale].requests_per_s / by_key["one-at-a-time", scale].requests_per_s, 2
        )
    result = {
        "model_path": args.model_path or "tiny random (llava.testing.build_tiny_llava)",
        "device": args.device,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "torch_threads": args.threads,
        "cells": [asdict(c) for c in cells],
        "summary": summary,
    }
    print(markdown(cells))
    print()
    print(json.dumps(result["summary"], indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
