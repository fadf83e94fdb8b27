"""The worker's `--backend`: its flags, and `--backend openai` in front of a real OpenAI-compatible server.

The engine here is our own `llava.serve.openai_api` on the tiny checkpoint: a real server that takes the
budget only as its own `matryoshka_vis_token_scale` field, so to the worker it is an engine that ignores
`mm_processor_kwargs`, as vLLM's own LLaVA or SGLang would. The worker must find that out at start and
serve the full budget only, answering as our engine does there. vLLM behind the worker (both `--backend
vllm` and `--backend openai` on `vllm serve`) is tested in tests/vllm_plugin/test_worker_*.py.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from PIL import Image
from serve_helpers import png_b64, start_controller, start_worker, wait_for

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import SeparatorStyle, conv_templates
from llava.generation import ChatTurn, SamplingParams, build_chat_prompt, build_prompt
from llava.serve import args as serve_args
from llava.serve import model_worker, openai_api
from llava.serve.backends import backend_from_args
from llava.serve.backends.openai_engine import chat_messages, engine_refusal, read_chat
from llava.serve.backends.vllm_engine import engine_flags
from llava.serve.engine import GenerationChunk, InferenceEngine, Job
from llava.serve.http import BackgroundServer, RequestError, find_free_port
from llava.serve.service import service_from_args

CONV = "llava_v1"  # the template of the tiny checkpoint's name, which the engine (our server) uses
QUESTION = "What is in the image?"


def test_engine_flags_pass_through_to_vllm_only(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model-path", "m", "--backend", "vllm", "--tensor-parallel-size", "2", "--max-model-len=4096"]
    assert serve_args.parse_worker_args(argv).engine_args == ["--tensor-parallel-size", "2", "--max-model-len=4096"]
    assert serve_args.parse_openai_api_args(argv).engine_args == ["--tensor-parallel-size", "2", "--max-model-len=4096"]
    assert serve_args.parse_worker_args(["--model-path", "m"]).backend == "hf"
    for backend in ("hf", "openai"):
        with pytest.raises(SystemExit):
            serve_args.parse_worker_args(["--model-path", "m", "--backend", backend, "--tensor-parallel-size", "2"])
        assert "unrecognized arguments: --tensor-parallel-size 2 (only --backend vllm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve_args.parse_worker_args(["--model-path", "m", "--backend", "sglang"])
    assert "invalid choice: 'sglang'" in capsys.readouterr().err


def test_dtype_is_a_flag_of_both_engines(tiny_llava_pad: Path) -> None:
    base = ["--model-path", str(tiny_llava_pad), "--device", "cpu"]
    vllm_argv = [*base, "--backend", "vllm", "--max-model-len", "64"]
    forwarded = engine_flags(serve_args.parse_worker_args([*vllm_argv, "--dtype", "bfloat16"]))
    assert forwarded == ["--dtype", "bfloat16", "--max-model-len", "64"]
    assert engine_flags(serve_args.parse_worker_args(vllm_argv)) == ["--max-model-len", "64"]

    engine = InferenceEngine.from_args(serve_args.parse_worker_args([*base, "--dtype", "bfloat16"]))
    assert {param.dtype for param in engine.model.parameters()} == {torch.bfloat16}
    chunks: list[GenerationChunk] = []
    greedy = SamplingParams(temperature=0.0, max_new_tokens=5)
    prepared = engine.prepare(
        f"USER: {DEFAULT_IMAGE_TOKEN}\n{QUESTION} ASSISTANT:", [Image.new("RGB", (60, 40))], 9, greedy
    )
    engine.run_batch([Job(prepared, chunks.append)])
    assert chunks[-1].error is None and chunks[-1].finish_reason in ("stop", "length")
    assert chunks[-1].visual_tokens == 9

    with pytest.raises(SystemExit, match="--dtype bfloat16: the engine at --engine-url runs in the dtype"):
        backend_from_args(serve_args.parse_worker_args([*base, "--backend", "openai", "--dtype", "bfloat16"]))


@pytest.mark.parametrize("flag", ["--load-4bit", "--torch-compile", "--cpu-weight-prepack"])
def test_weight_loading_flags_are_for_our_engine_only(flag: str) -> None:
    args = serve_args.parse_worker_args(["--model-path", "m", "--backend", "vllm", flag])
    with pytest.raises(SystemExit, match=f"{flag}: only for --backend hf"):
        backend_from_args(args)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_names_the_extra(tiny_llava_pad: Path) -> None:
    args = serve_args.parse_worker_args(["--model-path", str(tiny_llava_pad), "--backend", "vllm"])
    with pytest.raises(ModuleNotFoundError, match=r"'vllm' extra"):
        backend_from_args(args)


def test_an_engine_that_does_not_answer_stops_the_worker(tiny_llava_pad: Path) -> None:
    url = f"http://127.0.0.1:{find_free_port()}/v1"
    argv = ["--model-path", str(tiny_llava_pad), "--backend", "openai", "--engine-url", url, "--engine-wait", "0"]
    with pytest.raises(SystemExit, match="did not answer GET /models"):
        backend_from_args(serve_args.parse_worker_args(argv))
    with pytest.raises(SystemExit, match="needs --engine-url"):
        backend_from_args(serve_args.parse_worker_args(["--model-path", str(tiny_llava_pad), "--backend", "openai"]))


# -- --backend openai in front of an engine that ignores budgets ---------------------------------------------


@pytest.fixture(scope="module")
def stack(tiny_llava_pad: Path) -> Iterator[dict[str, Any]]:
    engine_args = openai_api.parse_args(["--model-path", str(tiny_llava_pad), "--device", "cpu"])
    engine = BackgroundServer(openai_api.create_app(service_from_args(engine_args))).start()
    controller = start_controller()
    servers = [engine, controller]
    try:
        conv = ["--conv-mode", CONV]
        servers.append(start_worker(tiny_llava_pad, controller.url, ["--model-name", "tiny-hf", *conv]))
        remote = ["--backend", "openai", "--engine-url", f"{engine.url}/v1", "--model-name", "tiny-openai", *conv]
        servers.append(start_worker(tiny_llava_pad, controller.url, remote))

        def registered() -> bool:
            return {"tiny-hf", "tiny-openai"} <= set(httpx.post(f"{controller.url}/list_models").json()["models"])

        wait_for(registered, what="both workers to register")
        yield {"controller": controller.url, "hf": servers[2].url, "openai": servers[3].url, "engine": engine.url}
    finally:
        for server in reversed(servers):
            server.stop()


def generate(controller: str, model: str, scale: int | str | None) -> tuple[int, dict[str, Any]]:
    body = {
        "model": model,
        "prompt": build_prompt(CONV, QUESTION, 1),
        "images": [png_b64((60, 40))],
        "temperature": 0,
        "max_new_tokens": 8,
        "stop": "</s>",
        "matryoshka_vis_token_scale": scale,
    }
    with (
        httpx.Client(timeout=120) as client,
        client.stream("POST", f"{controller}/worker_generate_stream", json=body) as r,
    ):
        raw = r.read()
    if r.status_code != 200:
        return r.status_code, json.loads(raw)
    final = json.loads([part for part in raw.split(b"\0") if part][-1])
    return 200, {"text": final["text"][len(body["prompt"]) :], **final["usage"]}


def test_answers_at_the_full_budget_equal_our_engine(stack: dict[str, Any]) -> None:
    for scale in (None, 576):
        assert generate(stack["controller"], "tiny-openai", scale) == generate(stack["controller"], "tiny-hf", scale)


def test_an_engine_that_ignores_budgets_serves_the_full_budget_only(stack: dict[str, Any]) -> None:
    status = httpx.post(f"{stack['openai']}/worker_get_status").json()
    assert status["backend"] == "openai" and status["engine_serves_budgets"] is False
    assert status["engine_url"] == f"{stack['engine']}/v1" and status["engine_model"] == "llava-v1.5-tiny-m3"
    assert status["matryoshka"]["valid_scales"] == [576] and status["matryoshka"]["default_scale"] == 576
    assert status["matryoshka"]["auto"] is None  # no adaptive budget behind a remote engine
    code, refusal = generate(stack["controller"], "tiny-openai", 9)
    assert code == 400 and "does not take M3 budgets); valid values: [576]" in refusal["text"]
    visual = httpx.post(f"{stack['openai']}/worker_visual_tokens", json={"matryoshka_vis_token_scale": 9})
    assert visual.status_code == 400
    code, refusal = generate(stack["controller"], "tiny-openai", "auto")  # the policy needs our own engine
    assert code == 400 and "(--backend hf or vllm)" in refusal["text"]
    body = {"prompt": build_prompt(CONV, QUESTION, 1), "images": [png_b64()], "max_new_tokens": 2}
    compared = httpx.post(f"{stack['openai']}/worker_compare_budgets", json=body, timeout=60)
    assert compared.status_code == 400 and "needs our own engine (--backend hf)" in compared.json()["text"]
    assert generate(stack["controller"], "tiny-openai", 576)[0] == 200  # and it keeps serving


def test_openai_api_of_the_worker_equals_our_engine(stack: dict[str, Any]) -> None:
    url = "data:image/png;base64," + png_b64((50, 70))
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}],
        },
        {"role": "assistant", "content": "A square."},
        {"role": "user", "content": "What colour is it?"},
    ]
    answers = {}
    for name in ("hf", "openai"):
        with openai.OpenAI(base_url=f"{stack[name]}/v1", api_key="unused", max_retries=0) as client:
            response = client.chat.completions.create(
                model=f"tiny-{name}", messages=messages, max_tokens=8, temperature=0
            )
            chunks = list(
                client.chat.completions.create(
                    model=f"tiny-{name}",
                    messages=messages,
                    max_tokens=8,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            answers[name] = (response.choices[0].message.content, response.usage.prompt_tokens, streamed)
            if name == "openai":
                with pytest.raises(openai.BadRequestError, match=r"valid values: \[576\]"):
                    client.chat.completions.create(
                        model="tiny-openai",
                        messages=messages,
                        max_tokens=2,
                        extra_body={"matryoshka_vis_token_scale": 9},
                    )
    assert answers["openai"] == answers["hf"]
    assert answers["openai"][0] == answers["openai"][2]


def test_a_default_budget_the_engine_cannot_serve_stops_the_worker(stack: dict[str, Any], tiny_llava_pad: Path) -> None:
    argv = ["--model-path", str(tiny_llava_pad), "--backend", "openai", "--engine-url", f"{stack['engine']}/v1"]
    with pytest.raises(SystemExit, match="cannot default to matryoshka_vis_token_scale=9"):
        model_worker.build_app(model_worker.parse_args([*argv, "--matryoshka_vis_token_scale", "9", "--no-register"]))


# -- a worker-protocol prompt read back into chat messages ------------------------------------------------------

CHAT_TEMPLATES = sorted(
    name for name, conv in conv_templates.items() if conv.sep_style != SeparatorStyle.PLAIN and not conv.messages
)


@pytest.mark.parametrize("name", CHAT_TEMPLATES)
@pytest.mark.parametrize("system", [None, "Answer in one word."])
def test_prompts_read_back_into_the_chat_they_render(name: str, system: str | None) -> None:
    turns = [("user", "<image>\nWhat is in the image?"), ("assistant", "A red circle."), ("user", "And its size?")]
    for count in (1, 3):
        chat = ([("system", system)] if system is not None else []) + turns[:count]
        prompt = build_chat_prompt([ChatTurn(role, [("text", text)]) for role, text in chat], name).prompt
        assert read_chat(prompt, name) == chat, prompt


def test_chat_messages_put_each_image_where_its_marker_stands() -> None:
    chat = [ChatTurn("user", [("text", "Compare"), ("image", "a"), ("text", "with"), ("image", "b"), ("text", "?")])]
    prompt = build_chat_prompt(chat, CONV).prompt
    messages = chat_messages(prompt, CONV, ["data:a", "data:b"])
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": "data:a"}},
                {"type": "text", "text": "with"},
                {"type": "image_url", "image_url": {"url": "data:b"}},
                {"type": "text", "text": "?"},
            ],
        }
    ]
    assert read_chat("USER: no system prompt here ASSISTANT:", CONV) is None
    answered = [
        ChatTurn("user", [("text", "Hi")]),
        ChatTurn("assistant", [("image", "a")]),
        ChatTurn("user", [("text", "And?")]),
    ]
    with pytest.raises(RequestError, match="only user messages may carry images"):
        chat_messages(build_chat_prompt(answered, CONV).prompt, CONV, ["data:a"])


def test_engine_errors_keep_their_meaning() -> None:
    refused = engine_refusal(400, b'{"error": {"message": "too long", "type": "BadRequestError"}}', "http://e/v1")
    assert (refused.status, refused.message) == (400, "the engine refused the request: too long")
    assert engine_refusal(503, b"busy", "http://e/v1").status == 503
    assert engine_refusal(401, b'{"message": "bad key"}', "http://e/v1").status == 502
