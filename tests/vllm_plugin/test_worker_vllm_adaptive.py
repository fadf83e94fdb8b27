"""`"matryoshka_vis_token_scale": "auto"` on a `--backend vllm` worker: the ladder walk over vLLM's engine.

Our engine (`m3-hf`, no policy) measures each rung's p_first for one question with `/worker_compare_budgets`;
the checkpoint copy that vLLM serves gets a policy whose thresholds sit far from those values (half of the
distance to 1 above the first rung's, half of the middle rung's), so the walk must skip the first rung and
answer at the middle one. The answer, its usage and its stream must then be our engine's at that budget.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from vllm_helpers import VLLM_MISSING, noise_image
from worker_helpers import (
    CONV_MODE,
    ENGINE_FLAGS,
    NEW_TOKENS,
    answers,
    build_text_checkpoint,
    chat_answers,
    image_messages,
    payload,
    start_controller,
    start_worker,
    wait_for_models,
)

from llava.generation import build_prompt
from llava.scale_policy import ScalePolicy, write_policy_file
from llava.serve.http import BackgroundServer

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow

QUESTION = "What is in the image? Describe the picture."
IMAGE = noise_image(80, 40, seed=11)
LADDER = (1, 36, 576)


def rung_confidence(worker: str) -> dict[int, float]:
    """p_first of each rung of `LADDER` for `QUESTION` about `IMAGE`, as our engine measures it."""
    body = {**payload("m3-hf", QUESTION, IMAGE, None), "matryoshka_vis_token_scales": list(LADDER)}
    compared = httpx.post(f"{worker}/worker_compare_budgets", json=body, timeout=300).json()
    return {answer["matryoshka_vis_token_scale"]: answer["p_first"] for answer in compared["answers"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Iterator[dict[str, Any]]:
    checkpoint = build_text_checkpoint(tmp_path_factory.mktemp("worker-vllm-auto"), tiny_clip)
    controller = start_controller()
    servers: list[BackgroundServer] = [controller]
    try:
        servers.append(start_worker(checkpoint, "m3-hf", controller.url, ["--device", "cpu"]))
        p_first = rung_confidence(servers[1].url)
        thresholds = ((1 + p_first[1]) / 2, p_first[36] / 2, 0.0)  # rung 1 not sure enough, rung 36 sure
        with_policy = shutil.copytree(checkpoint, tmp_path_factory.mktemp("with-policy") / checkpoint.name)
        write_policy_file(with_policy / "matryoshka_policy.json", ScalePolicy(LADDER, thresholds))
        servers.append(start_worker(with_policy, "m3-vllm", controller.url, ["--backend", "vllm", *ENGINE_FLAGS]))
        wait_for_models(controller.url, {"m3-hf", "m3-vllm"})
        yield {"controller": controller.url, "hf": servers[1].url, "vllm": servers[2].url}
    finally:
        for server in reversed(servers):
            server.stop()


def test_auto_skips_the_unsure_rung_and_answers_as_the_fixed_budget(stack: dict[str, Any]) -> None:
    (auto,) = answers(stack["controller"], "m3-vllm", QUESTION, [(IMAGE, "auto")])
    (fixed,) = answers(stack["controller"], "m3-hf", QUESTION, [(IMAGE, 36)])
    assert auto["matryoshka_vis_token_scale"] == "auto"
    assert auto["matryoshka_vis_token_scale_used"] == 36
    assert (auto["visual_tokens"], auto["visual_tokens_processed"]) == (36, 1 + 36)
    for key in ("text", "finish_reason", "prompt_tokens", "completion_tokens", "visual_tokens"):
        assert auto[key] == fixed[key], key
    assert auto["completion_tokens"] <= NEW_TOKENS


def test_the_status_shows_the_policy_and_a_text_prompt_answers_at_the_first_rung(stack: dict[str, Any]) -> None:
    status = httpx.post(f"{stack['vllm']}/worker_get_status").json()
    assert status["backend"] == "vllm" and status["matryoshka"]["auto"]["ladder"] == list(LADDER)
    assert status["matryoshka"]["auto"]["calibrated"] is True
    body = {"prompt": build_prompt(CONV_MODE, "Say something.", 0), "max_new_tokens": 4, "temperature": 0}
    response = httpx.post(
        f"{stack['vllm']}/worker_generate_stream", json={**body, "matryoshka_vis_token_scale": "auto"}
    )
    final = [part for part in response.content.split(b"\0") if part][-1]
    assert b'"matryoshka_vis_token_scale_used": 1' in final and b'"visual_tokens": 0' in final


def test_auto_through_the_openai_api_of_the_vllm_worker(stack: dict[str, Any]) -> None:
    messages = image_messages(QUESTION, IMAGE)
    served = chat_answers(stack["vllm"], "m3-vllm", messages, ["auto"])
    reference = chat_answers(stack["hf"], "m3-hf", messages, [36])
    assert served["auto"] == reference[36] and served["stream"] == reference["stream"]
