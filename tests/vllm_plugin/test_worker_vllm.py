"""`python -m llava.serve.model_worker --backend vllm`: an in-process vLLM engine behind our controller and
OpenAI API, answering as our own engine does.

One controller, and two workers on the same checkpoint registered under two names: `m3-hf` (our engine,
the reference) and `m3-vllm` (vLLM's async engine with the plugin, float32 and eager like our engine on
the CPU). Greedy answers must be equal, through the controller and through `/v1/chat/completions`, with
the same usage at each budget and the same 400 for an invalid one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_helpers import VLLM_MISSING, noise_image
from worker_helpers import (
    ENGINE_FLAGS,
    NEW_TOKENS,
    answers,
    build_text_checkpoint,
    chat_answers,
    image_messages,
    payload,
    refusal,
    start_controller,
    start_worker,
    wait_for_models,
)

from llava.serve.http import BackgroundServer

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow

QUESTION = "What is in the image? Describe the picture."
# Wide and tall: the worker's padding to a square and the engine's must agree.
IMAGES = [noise_image(80, 40, seed=11), noise_image(30, 60, seed=12)]
SCALES = [576, 36, 1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Iterator[dict[str, Any]]:
    checkpoint = build_text_checkpoint(tmp_path_factory.mktemp("worker-vllm"), tiny_clip)
    controller = start_controller()
    servers: list[BackgroundServer] = [controller]
    try:
        servers.append(start_worker(checkpoint, "m3-hf", controller.url, ["--device", "cpu"]))
        servers.append(start_worker(checkpoint, "m3-vllm", controller.url, ["--backend", "vllm", *ENGINE_FLAGS]))
        wait_for_models(controller.url, {"m3-hf", "m3-vllm"})
        yield {"controller": controller.url, "hf": servers[1].url, "vllm": servers[2].url}
    finally:
        for server in reversed(servers):
            server.stop()


def test_answers_through_the_controller_equal_our_engine(stack: dict[str, Any]) -> None:
    """Six requests at once (two images × three budgets): the engine batches them continuously."""
    cases = [(image, scale) for image in IMAGES for scale in SCALES]
    ours = answers(stack["controller"], "m3-hf", QUESTION, cases)
    served = answers(stack["controller"], "m3-vllm", QUESTION, cases)
    for (image, scale), mine, theirs in zip(cases, ours, served):
        assert theirs == mine, (image.size, scale)
        assert theirs["visual_tokens"] == scale and theirs["matryoshka_vis_token_scale"] == scale
    by_scale = {scale: result["prompt_tokens"] for (_, scale), result in zip(cases, served)}
    assert by_scale[576] - by_scale[1] == 575  # the budget shows in the prompt's length
    assert any(result["finish_reason"] == "length" and result["completion_tokens"] == NEW_TOKENS for result in served)


def test_openai_api_of_the_vllm_worker(stack: dict[str, Any]) -> None:
    messages = image_messages(QUESTION, IMAGES[0])
    served = chat_answers(stack["vllm"], "m3-vllm", messages, [576, 9])
    assert served == chat_answers(stack["hf"], "m3-hf", messages, [576, 9])
    assert served[576][1] - served[9][1] == 567


def test_invalid_budget_is_the_same_400_and_the_worker_keeps_serving(stack: dict[str, Any]) -> None:
    refused = refusal(stack["controller"], "m3-vllm", QUESTION, IMAGES[0], 10)
    assert refused == refusal(stack["controller"], "m3-hf", QUESTION, IMAGES[0], 10)
    assert "[1, 4, 9, 16, 36, 64, 144, 576]" in refused
    api = httpx.post(
        f"{stack['vllm']}/v1/chat/completions",
        json={"model": "m3-vllm", "messages": [{"role": "user", "content": "hi"}], "matryoshka_vis_token_scale": 10},
        timeout=60,
    )
    assert api.status_code == 400 and api.json()["error"]["param"] == "matryoshka_vis_token_scale"
    assert answers(stack["controller"], "m3-vllm", QUESTION, [(IMAGES[0], 9)])[0]["visual_tokens"] == 9


def test_status_and_visual_tokens_are_the_checkpoints(stack: dict[str, Any]) -> None:
    status = {name: httpx.post(f"{stack[name]}/worker_get_status", timeout=10).json() for name in ("hf", "vllm")}
    assert status["vllm"]["backend"] == "vllm" and status["hf"]["backend"] == "hf"
    assert status["vllm"]["matryoshka"] == {**status["hf"]["matryoshka"], "context_length": 2048}
    assert status["vllm"]["tensor_parallel_size"] == 1
    body = {"matryoshka_vis_token_scale": 36, "image_size": [80, 40]}
    costs = [httpx.post(f"{stack[name]}/worker_visual_tokens", json=body, timeout=10).json() for name in ("hf", "vllm")]
    assert costs[0] == costs[1] and costs[1]["visual_tokens"] == 36


def test_a_client_that_leaves_cancels_its_request(stack: dict[str, Any]) -> None:
    def status() -> dict[str, Any]:
        return httpx.post(f"{stack['vllm']}/worker_get_status", timeout=10).json()

    before = status()["requests_cancelled"]
    body = {**payload("m3-vllm", QUESTION, IMAGES[1], 576), "max_new_tokens": 512, "stop": None}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{stack['vllm']}/worker_generate_stream", json=body) as response:
            assert response.status_code == 200
            next(response.iter_bytes())  # the first chunk, then hang up
    deadline = time.monotonic() + 30
    while status()["requests_cancelled"] == before:
        assert time.monotonic() < deadline, "the engine did not notice the client leaving"
        time.sleep(0.1)
    assert status()["queue_length"] == 0
