"""`vllm serve` of an M3 checkpoint on 127.0.0.1: budgets through the OpenAI API, a bad budget is a 400.

A real server process (vLLM's OpenAI server, our plugin found through its entry point, our chat
template), driven with the official `openai` client and plain HTTP. vLLM's server takes per-request
`mm_processor_kwargs` only with `--trust-request-mm-kwargs`. The checkpoint's projector is wide enough
to be packed for oneDNN, and the server runs as `vllm serve` does by default (engine core in its own
process, compiled, not eager), so its start-up profiling runs the packed layers on that path.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import vllm_server
from vllm_helpers import VLLM_MISSING, Reference, build_wide_projector_checkpoint, chat_prompt, noise_image

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Path:
    return build_wide_projector_checkpoint(tmp_path_factory.mktemp("vllm-serve-ckpt"), tiny_clip)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Iterator[str]:
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    with vllm_server(checkpoint, log, ["--served-model-name", "m3"], eager=False) as url:
        yield url


def image_message(question: str, png: bytes) -> list[dict]:
    data = base64.b64encode(png).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                {"type": "text", "text": question},
            ],
        }
    ]


@pytest.fixture(scope="module")
def png() -> bytes:
    buffer = io.BytesIO()
    noise_image(96, 64, seed=8).save(buffer, format="PNG")
    return buffer.getvalue()


def test_budget_per_request_through_the_openai_client(server: str, checkpoint: Path, png: bytes) -> None:
    from openai import OpenAI
    from PIL import Image

    client = OpenAI(base_url=f"{server}/v1", api_key="unused")
    question = "How many shapes are there?"
    reference = Reference(checkpoint)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    prompt = chat_prompt(question, "llava_v1")  # the template the checkpoint's name implies
    text_tokens = len(reference.prompt_ids(prompt)) - 1
    for scale in (576, 36, 9, 1):
        response = client.chat.completions.create(
            model="m3",
            messages=image_message(question, png),
            max_tokens=6,
            temperature=0,
            extra_body={"mm_processor_kwargs": {"matryoshka_vis_token_scale": scale}, "return_token_ids": True},
        )
        assert response.usage.prompt_tokens == text_tokens + scale
        assert response.choices[0].model_extra["token_ids"] == reference.generate(prompt, image, scale, 6)


def test_invalid_budget_is_a_400_and_the_server_keeps_serving(server: str, png: bytes) -> None:
    import httpx

    body = {
        "model": "m3",
        "messages": image_message("What is in the image?", png),
        "max_tokens": 2,
        "mm_processor_kwargs": {"matryoshka_vis_token_scale": 10},
    }
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "matryoshka_vis_token_scale=10" in message and "[1, 4, 9, 16, 36, 64, 144, 576]" in message
    body["mm_processor_kwargs"] = {"matryoshka_vis_token_scale": 9}
    assert httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60).status_code == 200
