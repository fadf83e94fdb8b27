"""The OpenAI-compatible API driven by the official `openai` client, on a worker and standalone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serve_helpers import png_b64

from llava.serve import openai_api
from llava.serve.http import BackgroundServer
from llava.serve.service import service_from_args


def image_message(text: str = "What is in the image?", *images: str) -> list[dict]:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}} for b64 in images]
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def client(worker: BackgroundServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{worker.url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def test_models_lists_the_served_model_with_its_budgets(client: openai.OpenAI, tiny_llava_pad: Path) -> None:
    (card,) = client.models.list().data
    assert card.id == tiny_llava_pad.name
    assert card.model_extra["matryoshka"]["trained_scales"] == [1, 9, 36, 144, 576]


def test_prompt_tokens_differ_between_scales_by_exactly_the_visual_tokens(client: openai.OpenAI, model: str) -> None:
    usages = {}
    for scale in (9, 576):
        completion = client.chat.completions.create(
            model=model,
            messages=image_message("Describe it.", png_b64()),
            max_tokens=5,
            temperature=0,
            extra_body={"matryoshka_vis_token_scale": scale},
        )
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 5
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5
        usages[scale] = completion.usage
    assert usages[576].prompt_tokens - usages[9].prompt_tokens == 576 - 9
    assert (usages[9].model_extra["visual_tokens"], usages[576].model_extra["visual_tokens"]) == (9, 576)


def test_streaming_gives_the_same_answer_and_usage(client: openai.OpenAI, model: str) -> None:
    request = dict(
        model=model,
        messages=image_message("What is it?", png_b64()),
        max_tokens=8,
        temperature=0,
        extra_body={"matryoshka_vis_token_scale": 9},
    )
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert whole.usage.model_extra["visual_tokens"] == 9


def test_stop_sequences_cut_the_answer(client: openai.OpenAI, model: str) -> None:
    request = dict(model=model, messages=[{"role": "user", "content": "Say something."}], max_tokens=12, temperature=0)
    full = client.chat.completions.create(**request).choices[0].message.content
    stop = full[4:7]
    assert full.find(stop) == 4
    cut = client.chat.completions.create(**request, stop=[stop])
    assert cut.choices[0].message.content == full[:4]
    assert cut.choices[0].finish_reason == "stop"


def test_multi_turn_with_a_system_prompt(client: openai.OpenAI, model: str) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        *image_message("What is it?", png_b64()),
        {"role": "assistant", "content": "A red box."},
        {"role": "user", "content": "And its colour?"},
    ]
    completion = client.chat.completions.create(model=model, messages=messages, max_tokens=3)
    assert completion.usage.model_extra["visual_tokens"] == 576  # the checkpoint's default budget


@pytest.mark.parametrize(
    ("change", "status", "expected"),
    [
        ({"extra_body": {"matryoshka_vis_token_scale": 10}}, 400, "valid values: [1, 4, 9, 16, 36, 64, 144, 576]"),
        ({"model": "gpt-4o"}, 404, "not served here"),
        ({"messages": image_message("x", "file:///etc/passwd")}, 400, "disk"),
        ({"messages": image_message("x", "/etc/hostname")}, 400, "disk"),
        ({"messages": [{"role": "user", "content": "<image> what is this?"}]}, 400, "placeholder"),
        ({"messages": [{"role": "user", "content": "word " * 2100}]}, 400, "context length"),
        ({"messages": image_message("x", png_b64((1024, 600)))}, 413, "pixels"),
        ({"messages": image_message("x", "A" * 300_000)}, 413, "limit"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "must start with a user message"),
    ],
)
def test_bad_requests_get_openai_errors(client: openai.OpenAI, model: str, change: dict, status: int, expected: str):
    request = {"model": model, "messages": image_message("hi", png_b64()), "max_tokens": 2, **change}
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**request)
    assert info.value.status_code == status
    assert expected in info.value.body["message"]


def test_remote_image_urls_need_the_flag(client: openai.OpenAI, model: str) -> None:
    parts = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}, {"type": "text", "text": "x"}]
    with pytest.raises(openai.BadRequestError, match="--allow-remote-images"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": parts}], max_tokens=2)


def test_malformed_bodies_are_400(worker: BackgroundServer, model: str) -> None:
    url = f"{worker.url}/v1/chat/completions"
    assert httpx.post(url, content=b"{oops").status_code == 400
    assert httpx.post(url, json={"model": model, "messages": []}).status_code == 400
    answer = httpx.post(url, json={"model": model, "messages": [{"role": "user", "content": "hi"}], "n": 2})
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"


@pytest.fixture(scope="module")
def standalone(tiny_llava_anyres: Path) -> Iterator[BackgroundServer]:
    """`python -m llava.serve.openai_api` as its main() assembles it, with an API key, on the anyres model."""
    args = openai_api.parse_args(["--model-path", str(tiny_llava_anyres), "--device", "cpu", "--api-key", "sesame"])
    server = BackgroundServer(openai_api.create_app(service_from_args(args), api_key=args.api_key)).start()
    yield server
    server.stop()


def test_standalone_server_checks_the_api_key(standalone: BackgroundServer) -> None:
    with openai.OpenAI(base_url=f"{standalone.url}/v1", api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    assert httpx.get(f"{standalone.url}/v1/models").status_code == 401


def test_standalone_anyres_usage_counts_the_crops(standalone: BackgroundServer, tiny_llava_anyres: Path) -> None:
    from llava.serve.engine import InferenceEngine

    counter = InferenceEngine.from_pretrained(str(tiny_llava_anyres), device="cpu")
    image = png_b64((96, 48))
    with openai.OpenAI(base_url=f"{standalone.url}/v1", api_key="sesame", max_retries=0) as client:
        model = client.models.list().data[0].id
        usage = {
            scale: client.chat.completions.create(
                model=model,
                messages=image_message("What?", image),
                max_tokens=2,
                extra_body={"matryoshka_vis_token_scale": scale},
            ).usage
            for scale in (1, 36)
        }
    expected = {scale: counter.model.num_visual_tokens(scale, image_size=(96, 48)) for scale in (1, 36)}
    assert {s: u.model_extra["visual_tokens"] for s, u in usage.items()} == expected
    assert usage[36].prompt_tokens - usage[1].prompt_tokens == expected[36] - expected[1]
