"""Controller + model workers over real HTTP: registration, dispatch, streaming, heartbeat expiry."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import png_b64, spawn_worker, start_controller, start_worker, wait_for

from llava.serve import controller as controller_mod
from llava.serve.http import BackgroundServer, find_free_port

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
            assert missing.status_code == 404 and "no worker" in missing.json()["text"]

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
    from llava.serve.protocol import WorkerStatus

    controller = Controller("lottery", seed=0)
    for name, speed in (("http://a", 1.0), ("http://b", 3.0)):
        controller.register_worker(name, WorkerStatus(model_names=["m"], speed=speed))
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


# -- the control plane: who may register, what a heartbeat may say, who is dropped --------------------

KEY = "controller-test-key"
STATUS = {"model_names": ["ghost"], "speed": 1, "queue_length": 0}


def test_registering_and_beating_need_the_worker_key() -> None:
    controller = start_controller(worker_key=KEY)
    try:
        with httpx.Client(base_url=controller.url, timeout=30) as client:
            register = {"worker_name": "http://127.0.0.1:9", "worker_status": STATUS}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                refused = client.post("/register_worker", json=register, headers=headers)
                assert refused.status_code == 401 and "worker key" in refused.json()["text"]
                beat = client.post("/receive_heart_beat", json={"worker_name": "http://127.0.0.1:9"}, headers=headers)
                assert beat.status_code == 401
            assert list_models(client) == []  # the fake worker never got in
            auth = {"Authorization": f"Bearer {KEY}"}
            assert client.post("/register_worker", json=register, headers=auth).status_code == 200
            assert list_models(client) == ["ghost"]
            beat = {"worker_name": "http://127.0.0.1:9", "queue_length": -1_000_000}
            negative = client.post("/receive_heart_beat", json=beat, headers=auth)
            assert (
                negative.status_code == 400
                and "queue_length: Input should be greater than or equal to 0" in (negative.json()["text"])
            )
            huge = client.post("/receive_heart_beat", json={**beat, "queue_length": 10**12}, headers=auth)
            assert huge.status_code == 400 and "queue_length" in huge.json()["text"]
            for name in ("file:///etc/passwd", "127.0.0.1:9", "http://", "http://exa mple.com"):
                bad = client.post("/register_worker", json={**register, "worker_name": name}, headers=auth)
                assert bad.status_code == 400 and "worker_name" in bad.json()["text"], name
    finally:
        controller.stop()


def test_workers_present_the_key_they_are_given(tiny_llava_pad: Path) -> None:
    controller = start_controller(worker_key=KEY)
    good = start_worker(tiny_llava_pad, controller.url, extra=["--worker-key", KEY, "--model-name", "good"])
    bad = start_worker(tiny_llava_pad, controller.url, extra=["--worker-key", "not-the-key", "--model-name", "bad"])
    try:
        with httpx.Client(base_url=controller.url, timeout=30) as client:
            wait_for(lambda: list_models(client) == ["good"], what="the worker with the key")
            time.sleep(1.0)  # several heartbeat intervals: the worker with the wrong key keeps being refused
            assert list_models(client) == ["good"]
    finally:
        good.stop()
        bad.stop()
        controller.stop()


def local_network_address() -> str | None:
    """This machine's address on its network (not loopback), or None when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_without_a_key_only_this_machine_may_register() -> None:
    address = local_network_address()
    if address is None:
        pytest.skip("this machine has no network address besides loopback to connect from")
    controller = controller_mod.Controller(seed=0)
    server = BackgroundServer(controller_mod.create_app(controller), host="0.0.0.0").start()
    try:
        register = {"worker_name": "http://127.0.0.1:9", "worker_status": STATUS}
        remote = httpx.post(f"http://{address}:{server.port}/register_worker", json=register, timeout=30)
        assert remote.status_code == 403 and "--worker-key" in remote.json()["text"]
        assert httpx.post(f"http://{address}:{server.port}/list_models").json() == {"models": []}
        local = httpx.post(f"http://127.0.0.1:{server.port}/register_worker", json=register, timeout=30)
        assert local.status_code == 200 and controller.list_models() == ["ghost"]
    finally:
        server.stop()


def test_a_worker_that_asks_not_to_be_checked_is_dropped_all_the_same() -> None:
    controller = start_controller(heartbeat_expiration=1.0)
    try:
        with httpx.Client(base_url=controller.url, timeout=30) as client:
            register = {"worker_name": "http://127.0.0.1:9", "check_heart_beat": False, "worker_status": STATUS}
            assert client.post("/register_worker", json=register).status_code == 200
            assert list_models(client) == ["ghost"]
            wait_for(lambda: list_models(client) == [], timeout=10, what="the silent worker to be dropped")
    finally:
        controller.stop()


def stream_then(client: httpx.Client, model: str, act) -> list[dict]:
    """Stream a long answer for `model` through the controller; `act()` after the first chunk; all chunks."""
    payload = {"model": model, "prompt": "USER: hi ASSISTANT:", "max_new_tokens": 1000, "temperature": 0}
    raw = b""
    with client.stream("POST", "/worker_generate_stream", json=payload) as response:
        assert response.status_code == 200
        for piece in response.iter_bytes():
            if not raw:
                act()
            raw += piece
    return [json.loads(part) for part in raw.split(b"\0") if part]


@pytest.mark.slow
def test_a_killed_or_hung_worker_ends_the_answer_with_an_error_chunk(tiny_llava_pad: Path, tmp_path: Path) -> None:
    controller = start_controller(heartbeat_expiration=3.0, worker_key=KEY)
    slow_reader = start_controller(heartbeat_expiration=300.0, worker_key=KEY, worker_read_timeout=1.0)
    processes = []
    try:
        for name in ("killed", "stopped"):
            extra = ["--model-name", name]
            processes.append(spawn_worker(tiny_llava_pad, tmp_path / f"{name}.log", controller.url, extra, KEY))
        (killed, _), (stopped, stopped_url) = processes
        with httpx.Client(base_url=controller.url, timeout=60) as client:
            wait_for(lambda: list_models(client) == ["killed", "stopped"], timeout=60, what="both workers")

            chunks = stream_then(client, "killed", lambda: os.kill(killed.pid, signal.SIGKILL))
            assert all(c["error_code"] == 0 for c in chunks[:-1]) and len(chunks) >= 2
            assert chunks[-1]["error_code"] == 502 and "failed mid-answer" in chunks[-1]["text"]
            assert list_models(client) == ["stopped"]  # dropped at once

            # A stopped process still accepts connections (the kernel does) but never answers or beats.
            chunks = stream_then(client, "stopped", lambda: os.kill(stopped.pid, signal.SIGSTOP))
            assert chunks[-1]["error_code"] == 502 and "stopped sending heartbeats" in chunks[-1]["text"]
            assert list_models(client) == []

        auth = {"Authorization": f"Bearer {KEY}"}
        register = {"worker_name": stopped_url, "worker_status": {"model_names": ["stopped"]}}
        assert httpx.post(f"{slow_reader.url}/register_worker", json=register, headers=auth).status_code == 200
        payload = {"model": "stopped", "prompt": "hi", "max_new_tokens": 2}
        answer = httpx.post(f"{slow_reader.url}/worker_generate_stream", json=payload, timeout=60)
        assert answer.status_code == 503 and "unreachable" in answer.json()["text"]  # after its 1 s read timeout
    finally:
        for process, _ in processes:
            process.kill()
            process.wait(timeout=30)
        slow_reader.stop()
        controller.stop()
