"""Controller + model workers over real HTTP: registration, dispatch, streaming, heartbeat expiry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import png_b64, start_controller, start_worker, wait_for

from llava.serve.http import find_free_port

PROMPT = "USER: <image>\nWhat is in the image? ASSISTANT:"


def list_models(client: httpx.Client) -> list[str]:
    return client.post("/list_models").json()["models"]


def stream(client: httpx.Client, url: str, payload: dict) -> list[dict]:
    with client.stream("POST", url, json=payload) as response:
        assert response.status_code == 200, response.read()
        raw = b"".join(response.iter_bytes())
    return [json.loads(part) for part in raw.split(b"\0") if part]


def test_register_list_dispatch_and_stream_through_the_controller(tiny_llava_pad: Path) -> None:
    controller = start_controller()
    workers = [start_worker(tiny_llava_pad, controller.url) for _ in range(2)]
    try:
        with httpx.Client(base_url=controller.url, timeout=30) as client:
            wait_for(lambda: len(client.post("/worker_get_status").json()["workers"]) == 2, what="registration")
            model = tiny_llava_pad.name
            assert list_models(client) == [model]
            addresses = {client.post("/get_worker_address", json={"model": model}).json()["address"] for _ in range(4)}
            assert addresses == {w.url for w in workers}  # shortest_queue spreads the requests
            assert client.post("/get_worker_address", json={"model": "nope"}).json() == {"address": ""}

            payload = {
                "model": model,
                "prompt": PROMPT,
                "images": [png_b64()],
                "temperature": 0,
                "max_new_tokens": 8,
                "matryoshka_vis_token_scale": 9,
            }
            chunks = stream(client, "/worker_generate_stream", payload)
            assert len(chunks) >= 2 and all(c["error_code"] == 0 for c in chunks)
            assert all(c["text"].startswith(PROMPT) for c in chunks)
            texts = [c["text"] for c in chunks]
            assert texts == sorted(texts, key=len)  # each chunk extends the previous one
            final = chunks[-1]
            assert final["finish_reason"] == "length"
            assert final["usage"]["visual_tokens"] == 9 and final["usage"]["completion_tokens"] == 8
            direct = stream(client, f"{workers[0].url}/worker_generate_stream", payload)
            assert direct[-1]["text"] == final["text"]  # greedy: same answer from either worker

            bad = client.post("/worker_generate_stream", json={**payload, "matryoshka_vis_token_scale": 10})
            assert bad.status_code == 400 and "valid values" in bad.json()["text"]
            missing = client.post("/worker_generate_stream", json={**payload, "model": "nope"})
            assert missing.status_code == 503 and "no worker" in missing.json()["text"]

            status = client.post(f"{workers[0].url}/worker_get_status").json()
            assert status["model_names"] == [model] and status["matryoshka"]["valid_scales"][-1] == 576
    finally:
        for worker in workers:
            worker.stop()
        controller.stop()


def test_a_worker_that_stops_beating_is_dropped(tiny_llava_pad: Path) -> None:
    controller = start_controller(heartbeat_expiration=2.0)
    worker = start_worker(tiny_llava_pad, controller.url, heartbeat=0.2)
    try:
        with httpx.Client(base_url=controller.url, timeout=30) as client:
            wait_for(lambda: list_models(client) == [tiny_llava_pad.name], what="registration")
            time.sleep(2.5)  # longer than the expiration: the heartbeats keep it registered
            assert list_models(client) == [tiny_llava_pad.name]
            worker.stop()
            stopped = time.monotonic()
            wait_for(lambda: list_models(client) == [], timeout=10, what="the dead worker to be dropped")
            assert time.monotonic() - stopped >= 1.0
            assert client.post("/receive_heart_beat", json={"worker_name": worker.url}).json() == {"exist": False}
    finally:
        worker.stop()
        controller.stop()


def test_refresh_and_proxy_drop_unreachable_workers(tiny_llava_pad: Path) -> None:
    controller = start_controller()
    with httpx.Client(base_url=controller.url, timeout=30) as client:
        try:
            dead = f"http://127.0.0.1:{find_free_port()}"
            status = {"model_names": ["ghost"], "speed": 1, "queue_length": 0}
            for _ in range(2):
                registered = client.post(
                    "/register_worker", json={"worker_name": dead, "check_heart_beat": True, "worker_status": status}
                )
                assert registered.status_code == 200
            assert list_models(client) == ["ghost"]
            answer = client.post("/worker_generate_stream", json={"model": "ghost", "prompt": "hi"})
            assert answer.status_code == 503 and "unreachable" in answer.json()["text"]
            assert list_models(client) == []
            client.post("/register_worker", json={"worker_name": dead, "worker_status": status})
            assert client.post("/refresh_all_workers").json() == {"workers": []}
            assert client.post("/register_worker", json={"worker_name": dead}).status_code == 400
            assert client.post("/register_worker", content=b"{not json").status_code == 400
        finally:
            controller.stop()


def test_lottery_dispatch_picks_among_live_workers() -> None:
    from llava.serve.controller import Controller

    controller = Controller("lottery", seed=0)
    for name, speed in (("http://a", 1), ("http://b", 3)):
        controller.register_worker(name, True, {"model_names": ["m"], "speed": speed, "queue_length": 0})
    picks = [controller.get_worker_address("m") for _ in range(400)]
    assert set(picks) == {"http://a", "http://b"} and 0.6 < picks.count("http://b") / len(picks) < 0.9
    with pytest.raises(ValueError, match="dispatch_method"):
        Controller("round_robin")


def test_controller_main_serves_from_the_command_line() -> None:
    port = find_free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llava.serve.controller", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def up() -> bool:
            try:
                return httpx.post(f"http://127.0.0.1:{port}/list_models", timeout=1).json() == {"models": []}
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, what="the controller to start")
    finally:
        process.terminate()
        process.wait(timeout=10)
