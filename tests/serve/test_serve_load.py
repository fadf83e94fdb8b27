"""A bounded load test: 200 requests, 16 at a time, mixed scales and malformed input, against one worker."""

from __future__ import annotations

import asyncio
import json
import random
import socket

import httpx
import pytest
from serve_helpers import png_b64, wait_for

from llava.serve.http import BackgroundServer

SCALES = (1, 9, 36, 144, 576)
PROMPT = "USER: <image>\nWhat is in the image? ASSISTANT:"
NUM_REQUESTS = 200
CONCURRENCY = 16


def malformed_requests(image: str) -> list[tuple[dict | bytes, int]]:
    """(body, expected status) for each fault the worker must answer without falling over."""
    return [
        ({"prompt": PROMPT, "images": [image], "matryoshka_vis_token_scale": 10}, 400),
        ({"prompt": PROMPT, "images": ["bm90IGFuIGltYWdl"]}, 400),
        ({"prompt": PROMPT, "images": [image, image]}, 400),
        ({"prompt": PROMPT, "images": ["/etc/passwd"]}, 400),
        ({"prompt": PROMPT, "images": ["file:///etc/passwd"]}, 400),
        ({"prompt": "word " * 2100}, 400),
        ({"prompt": PROMPT, "images": [png_b64((1024, 600))]}, 413),
        ({"prompt": PROMPT, "images": ["A" * 300_000]}, 413),
        (b"{not json", 400),
        ({"images": [image]}, 400),
    ]


async def generate(client: httpx.AsyncClient, body: dict | bytes) -> tuple[int, list[dict]]:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    async with client.stream("POST", "/worker_generate_stream", **kwargs) as response:
        raw = await response.aread()
    if response.status_code != 200:
        return response.status_code, [json.loads(raw)]
    return 200, [json.loads(part) for part in raw.split(b"\0") if part]


@pytest.mark.slow
def test_every_request_is_answered_and_the_worker_stays_healthy(worker: BackgroundServer) -> None:
    rng = random.Random(0)
    image = png_b64()
    faults = malformed_requests(image)
    plan: list[tuple[dict | bytes, int, int | None]] = []
    for i in range(NUM_REQUESTS):
        if i % 10 == 5:
            body, status = faults[(i // 10) % len(faults)]
            plan.append((body, status, None))
        else:
            scale = rng.choice(SCALES)
            body = {
                "prompt": PROMPT,
                "images": [image],
                "temperature": rng.choice([0.0, 0.7]),
                "max_new_tokens": rng.randint(2, 6),
                "matryoshka_vis_token_scale": scale,
            }
            plan.append((body, 200, scale))

    async def drive() -> list[tuple[int, list[dict]]]:
        limit = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=worker.url, timeout=120) as client:

            async def one(body: dict | bytes) -> tuple[int, list[dict]]:
                async with limit:
                    return await generate(client, body)

            return await asyncio.wait_for(asyncio.gather(*(one(body) for body, _, _ in plan)), timeout=240)

    results = asyncio.run(drive())
    assert len(results) == NUM_REQUESTS
    for (body, expected_status, scale), (status, chunks) in zip(plan, results):
        assert status == expected_status, chunks
        if scale is None:
            assert chunks[0]["error_code"] == expected_status and chunks[0]["text"]
            continue
        final = chunks[-1]
        assert final["error_code"] == 0 and final["finish_reason"] in ("length", "stop")
        assert final["usage"]["matryoshka_vis_token_scale"] == scale
        assert final["usage"]["visual_tokens"] == scale
        assert final["usage"]["completion_tokens"] <= body["max_new_tokens"]

    def status() -> dict:
        return httpx.post(f"{worker.url}/worker_get_status", timeout=10).json()

    # The last chunks reach the clients just before the scheduler marks its batch finished.
    wait_for(lambda: status()["queue_length"] == 0, timeout=10, what="an empty queue")
    status = status()
    assert status["largest_batch"] > 1  # concurrent requests were batched, not served one at a time
    _, chunks = asyncio.run(_one_more(worker.url, image))
    assert chunks[-1]["finish_reason"] == "length"


async def _one_more(url: str, image: str) -> tuple[int, list[dict]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        body = {"prompt": PROMPT, "images": [image], "max_new_tokens": 3, "temperature": 0}
        return await generate(client, body)


def test_a_client_that_disconnects_does_not_stall_the_worker(worker: BackgroundServer) -> None:
    """Closing a stream early cancels that request; the next one is served at once."""
    body = {"prompt": PROMPT, "images": [png_b64()], "max_new_tokens": 1000, "temperature": 0}
    with httpx.Client(base_url=worker.url, timeout=60) as client:
        with client.stream("POST", "/worker_generate_stream", json=body) as response:
            first = next(response.iter_bytes())
            assert first
        done = client.post("/worker_generate_stream", json={**body, "max_new_tokens": 2})
        assert done.status_code == 200 and b'"finish_reason": "length"' in done.content


def test_a_client_that_abandons_a_whole_answer_cancels_it(worker: BackgroundServer) -> None:
    """A non-streamed request whose client hangs up mid-answer stops generating, as an abandoned stream does."""

    def status() -> dict:
        return httpx.post(f"{worker.url}/worker_get_status", timeout=10).json()

    model = status()["model_names"][0]
    cancelled = status()["requests_cancelled"]
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "temperature": 0}
    payload = json.dumps(body).encode()
    host, port = worker.url.removeprefix("http://").split(":")
    # A raw socket lets the test hang up at a moment it chooses: once the worker says the answer is being
    # generated, however fast this machine generates it.
    with socket.create_connection((host, int(port)), timeout=30) as client:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        client.sendall(head.encode() + payload)
        wait_for(lambda: status()["queue_length"] > 0, timeout=30, interval=0.005, what="the answer to start")
    wait_for(lambda: status()["requests_cancelled"] == cancelled + 1, timeout=30, what="the request to be cancelled")
    wait_for(lambda: status()["queue_length"] == 0, timeout=30, what="an idle worker")
    answer = httpx.post(f"{worker.url}/v1/chat/completions", json={**body, "max_tokens": 2}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2
