"""`python -m llava.serve.model_worker --backend openai`: a worker in front of a real `vllm serve` of an M3
checkpoint (the plugin, `--trust-request-mm-kwargs`) on 127.0.0.1, answering as our own engine does.

One controller with a worker key, and two workers on the same checkpoint: `m3-hf` (our engine, the
reference) and `m3-openai` (the vLLM server does the work). Greedy answers must be equal through the
controller and through `/v1/chat/completions`, with the same usage at each budget and the same 400 for an
invalid one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_helpers import vllm_server
from vllm_helpers import VLLM_MISSING, noise_image
from worker_helpers import (
    NEW_TOKENS,
    answers,
    build_text_checkpoint,
    chat_answers,
    image_messages,
    payload,
    refusal,
    start_worker,
    wait_for_models,
)

from llava.serve import controller as controller_mod
from llava.serve.http import BackgroundServer

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow

WORKER_KEY = "sesame"
QUESTION = "How many shapes are there?"
IMAGES = [noise_image(96, 64, seed=21), noise_image(40, 72, seed=22)]
SCALES = [576, 36, 1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("worker-openai")
    checkpoint = build_text_checkpoint(root, tiny_clip)
    with vllm_server(checkpoint, root / "vllm.log", ["--served-model-name", "m3-engine"]) as engine:
        controller = controller_mod.create_app(controller_mod.Controller(seed=0), worker_key=WORKER_KEY)
        servers = [BackgroundServer(controller).start()]
        try:
            key = ["--worker-key", WORKER_KEY]
            servers.append(start_worker(checkpoint, "m3-hf", servers[0].url, ["--device", "cpu", *key]))
            openai = ["--backend", "openai", "--engine-url", f"{engine}/v1", *key]
            servers.append(start_worker(checkpoint, "m3-openai", servers[0].url, openai))
            wait_for_models(servers[0].url, {"m3-hf", "m3-openai"})
            yield {"controller": servers[0].url, "hf": servers[1].url, "openai": servers[2].url, "engine": engine}
        finally:
            for server in reversed(servers):
                server.stop()


def test_answers_through_the_controller_equal_our_engine(
    stack: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llava.serve.backends.openai_engine")
    cases = [(image, scale) for image in IMAGES for scale in SCALES] + [(IMAGES[0], None)]
    ours = answers(stack["controller"], "m3-hf", QUESTION, cases)
    served = answers(stack["controller"], "m3-openai", QUESTION, cases)
    for (image, scale), mine, theirs in zip(cases, ours, served):
        assert theirs == mine, (image.size, scale)
    by_scale = {scale: result["prompt_tokens"] for (_, scale), result in zip(cases, served)}
    assert by_scale[576] - by_scale[36] == 540 and by_scale[None] == by_scale[576]
    assert any(result["completion_tokens"] == NEW_TOKENS for result in served)
    # The engine read every prompt at the length the worker budgeted (it warns otherwise).
    assert not [record.message for record in caplog.records if "the engine read" in record.message]


def test_openai_api_of_the_worker_equals_our_engine(stack: dict[str, Any]) -> None:
    messages = image_messages(QUESTION, IMAGES[1], system="Answer briefly.")
    served = chat_answers(stack["openai"], "m3-openai", messages, [576, 9, 1])
    assert served == chat_answers(stack["hf"], "m3-hf", messages, [576, 9, 1])
    assert served[576][1] - served[9][1] == 567


def test_invalid_budget_is_the_same_400_and_the_worker_keeps_serving(stack: dict[str, Any]) -> None:
    refused = refusal(stack["controller"], "m3-openai", QUESTION, IMAGES[0], 10)
    assert refused == refusal(stack["controller"], "m3-hf", QUESTION, IMAGES[0], 10)
    assert "[1, 4, 9, 16, 36, 64, 144, 576]" in refused
    assert answers(stack["controller"], "m3-openai", QUESTION, [(IMAGES[0], 9)])[0]["visual_tokens"] == 9


def test_a_prompt_that_is_no_chat_in_the_template_is_a_400(stack: dict[str, Any]) -> None:
    body = {**payload("m3-openai", QUESTION, IMAGES[0], 9), "prompt": "<image>\nraw text, no template"}
    response = httpx.post(f"{stack['openai']}/worker_generate_stream", json=body, timeout=60)
    assert response.status_code == 400 and "conversation template 'llava_v1'" in response.json()["text"]


def test_status_names_the_engine(stack: dict[str, Any]) -> None:
    status = {name: httpx.post(f"{stack[name]}/worker_get_status", timeout=10).json() for name in ("hf", "openai")}
    assert status["openai"]["backend"] == "openai"
    assert status["openai"]["engine_url"] == f"{stack['engine']}/v1" and status["openai"]["engine_model"] == "m3-engine"
    assert status["openai"]["engine_serves_budgets"] is True
    # The same budgets; "auto" only where the worker runs the engine (see docs/Serving.md).
    assert status["openai"]["matryoshka"] == {**status["hf"]["matryoshka"], "auto": None}
