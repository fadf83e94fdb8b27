"""Shared by the worker-backend tests: a controller and workers in this process on free ports of 127.0.0.1,
chat prompts in the test checkpoint's template, answers read from the worker protocol's stream."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from vllm_helpers import build_pad_checkpoint

from llava.generation import build_prompt
from llava.serve import controller as controller_mod
from llava.serve import model_worker
from llava.serve.http import BackgroundServer, find_free_port
from llava.testing import silence_non_text_tokens

# The template the checkpoint's name implies, which the plugin's chat template renders for `vllm serve`.
CONV_MODE = "llava_v1"
NEW_TOKENS = 12
SCALE = "matryoshka_vis_token_scale"
ENGINE_STARTUP_S = 600
ENGINE_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--seed", "0"]
"""A `--backend vllm` worker's engine flags: float32 and eager, as our engine runs on the CPU."""


def build_text_checkpoint(root: Path, tower: Path) -> Path:
    """The tests' tiny pad checkpoint (`build_pad_checkpoint`) whose greedy answers are text
    (`silence_non_text_tokens`), so that answers can be compared as text across engines."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    checkpoint = build_pad_checkpoint(root, tower)
    (weights,) = checkpoint.glob("*.safetensors")
    state = load_file(weights)
    silence_non_text_tokens(state["lm_head.weight"], AutoTokenizer.from_pretrained(checkpoint))
    save_file(state, weights, metadata={"format": "pt"})
    return checkpoint


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def start_controller() -> BackgroundServer:
    controller = controller_mod.Controller("shortest_queue", 30.0, seed=0)
    return BackgroundServer(controller_mod.create_app(controller)).start()


def start_worker(checkpoint: Path, name: str, controller_url: str, extra: Sequence[str] = ()) -> BackgroundServer:
    """`python -m llava.serve.model_worker` (in a thread of this process) serving `checkpoint` as `name`."""
    port = find_free_port()
    argv = ["--model-path", str(checkpoint), "--model-name", name, "--conv-mode", CONV_MODE, "--port", str(port)]
    argv += ["--controller", controller_url, "--heartbeat-interval", "0.2", *extra]
    app = model_worker.build_app(model_worker.parse_args(argv))
    return BackgroundServer(app, port=port).start(timeout=ENGINE_STARTUP_S)


def wait_for_models(controller_url: str, names: set[str], timeout_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while names - set(httpx.post(f"{controller_url}/list_models", timeout=10).json()["models"]):
        if time.monotonic() > deadline:
            raise AssertionError(f"workers {sorted(names)} did not register in {timeout_s} s")
        time.sleep(0.1)


def payload(model: str, question: str, image: Image.Image, scale: int | None) -> dict[str, Any]:
    """A greedy `/worker_generate_stream` request, prompt and stop as the web demo sends them."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": build_prompt(CONV_MODE, question, 1),
        "images": [png_b64(image)],
        "temperature": 0.0,
        "max_new_tokens": NEW_TOKENS,
        "stop": "</s>",
    }
    if scale is not None:
        body["matryoshka_vis_token_scale"] = scale
    return body


async def stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every chunk of one streamed answer (NUL-delimited JSON)."""
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        raw = b"".join([part async for part in response.aiter_bytes()])
    return [json.loads(part) for part in raw.split(b"\0") if part]


def answer(chunks: list[dict[str, Any]], prompt: str) -> dict[str, Any]:
    """The final chunk's answer and usage, after checking the stream is well formed."""
    assert all(chunk["error_code"] == 0 for chunk in chunks), chunks[-1]
    texts = [chunk["text"] for chunk in chunks]
    assert all(text.startswith(prompt) for text in texts)
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))  # each chunk extends the last
    final = chunks[-1]
    return {"text": final["text"][len(prompt) :], "finish_reason": final["finish_reason"], **final["usage"]}


async def _answers(controller: str, model: str, question: str, cases: Sequence[tuple[Any, int | None]]) -> list[dict]:
    async with httpx.AsyncClient(timeout=300) as client:
        bodies = [payload(model, question, image, scale) for image, scale in cases]
        results = await asyncio.gather(*(stream(client, f"{controller}/worker_generate_stream", b) for b in bodies))
    return [answer(chunks, body["prompt"]) for chunks, body in zip(results, bodies)]


def answers(controller: str, model: str, question: str, cases: Sequence[tuple[Any, int | None]]) -> list[dict]:
    """The answers to (image, budget) cases, all sent at once through the controller (`answer` of each)."""
    return asyncio.run(_answers(controller, model, question, cases))


def chat_answers(worker: str, model: str, messages: list[dict[str, Any]], scales: Sequence[int]) -> dict[Any, tuple]:
    """Greedy `/v1/chat/completions` of a worker with the `openai` client: (text, prompt and completion tokens)
    at each budget, and (text, prompt tokens) of a streamed answer at the last budget under "stream"."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{worker}/v1", api_key="unused")
    common = {"model": model, "messages": messages, "max_tokens": NEW_TOKENS, "temperature": 0}
    results: dict[Any, tuple] = {}
    for scale in scales:
        response = client.chat.completions.create(**common, extra_body={SCALE: scale})
        usage = response.usage
        results[scale] = (response.choices[0].message.content, usage.prompt_tokens, usage.completion_tokens)
    options = {"stream": True, "stream_options": {"include_usage": True}, "extra_body": {SCALE: scales[-1]}}
    chunks = list(client.chat.completions.create(**common, **options))
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    results["stream"] = (streamed, chunks[-1].usage.prompt_tokens)
    return results


def image_messages(question: str, image: Image.Image, system: str | None = None) -> list[dict[str, Any]]:
    url = "data:image/png;base64," + png_b64(image)
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]


def refusal(controller: str, model: str, question: str, image: Image.Image, scale: int) -> str:
    """The message of the 400 that the controller relays for a request at an invalid budget."""
    response = httpx.post(
        f"{controller}/worker_generate_stream", json=payload(model, question, image, scale), timeout=60
    )
    assert response.status_code == 400, response.text
    return response.json()["text"]
