"""`matryoshka_vis_token_scale: "auto"` over HTTP: the worker protocol and the OpenAI API on real workers.

The shipped M3-Shapes model answers with its calibrated policy, and each auto answer must be the fixed
answer at the budget the response reports. Copies of the tiny random checkpoint carry policies whose
thresholds fix the rung (0: the lowest answers, 1: the highest), which pins the usage numbers.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from serve_helpers import png_b64, start_worker

from llava.data import shapes
from llava.generation import build_prompt
from llava.scale_policy import ScalePolicy, write_policy_file
from llava.serve.http import BackgroundServer

REPO = Path(__file__).resolve().parents[2]
SHAPES_MODEL = REPO / "playground" / "shapes-m3-tiny"
LADDER = (1, 9, 576)
QUESTION = "What is in the image?"
QUESTION_PART = {"type": "text", "text": QUESTION}


def with_policy(model: Path, folder: Path, policy: ScalePolicy) -> Path:
    """A copy of checkpoint `model` in `folder` (same name, so the same template) with `policy` beside it."""
    copy = shutil.copytree(model, folder / model.name)
    write_policy_file(copy / "matryoshka_policy.json", policy, {"target": "test"})
    return copy


@pytest.fixture(scope="module")
def policy_workers(tiny_llava_pad: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Workers on the tiny checkpoint whose `auto` is a policy answering at the lowest ("low") or highest rung."""
    policies = {"low": ScalePolicy.uniform(LADDER, 0.0), "high": ScalePolicy.uniform(LADDER, 1.0)}
    servers = {
        name: start_worker(with_policy(tiny_llava_pad, tmp_path_factory.mktemp(name), policy))
        for name, policy in policies.items()
    }
    yield {name: server.url for name, server in servers.items()}
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def shapes_worker() -> Iterator[BackgroundServer]:
    server = start_worker(SHAPES_MODEL)
    yield server
    server.stop()


def worker_answer(url: str, prompt: str, images: list[str], scale: int | str | None, tokens: int = 6) -> dict[str, Any]:
    """The last chunk of a greedy `/worker_generate_stream` answer, with `answer` (the text after the prompt)."""
    body = {"prompt": prompt, "images": images, "temperature": 0, "max_new_tokens": tokens}
    if scale is not None:
        body["matryoshka_vis_token_scale"] = scale
    response = httpx.post(f"{url}/worker_generate_stream", json=body, timeout=120)
    assert response.status_code == 200, response.text
    chunks = [json.loads(part) for part in response.content.split(b"\0") if part]
    assert all(chunk["error_code"] == 0 for chunk in chunks), chunks[-1]
    assert "usage" in chunks[-1] and not any("usage" in chunk for chunk in chunks[:-1])
    return {**chunks[-1], "answer": chunks[-1]["text"][len(prompt) :]}


def test_auto_answers_equal_the_fixed_answer_at_the_reported_budget(shapes_worker: BackgroundServer, tmp_path: Path):
    records = shapes.generate_split(tmp_path, "test", 6, shapes.DEFAULT_SEEDS["test"])
    used = set()
    for record in records:
        question = record["conversations"][0]["value"].split("\n", 1)[1]
        prompt = build_prompt("llava_v1", question, 1)
        image = [base64.b64encode((tmp_path / record["image"]).read_bytes()).decode()]
        auto = worker_answer(shapes_worker.url, prompt, image, "auto")
        usage = auto["usage"]
        fixed = worker_answer(shapes_worker.url, prompt, image, usage["matryoshka_vis_token_scale_used"])
        assert auto["answer"] == fixed["answer"], (question, usage)
        assert usage["matryoshka_vis_token_scale"] == "auto"
        for key in ("prompt_tokens", "visual_tokens", "completion_tokens", "matryoshka_vis_token_scale_used"):
            assert usage[key] == fixed["usage"][key], key
        assert usage["visual_tokens_processed"] >= usage["visual_tokens"]
        used.add(usage["matryoshka_vis_token_scale_used"])
    policy = json.loads((SHAPES_MODEL / "matryoshka_policy.json").read_text())["policy"]
    assert used <= set(policy["ladder"]) and len(used) > 1, used  # these questions are not all equally hard


def test_threshold_zero_answers_at_the_lowest_rung_and_one_at_the_highest(policy_workers: dict[str, str]) -> None:
    prompt = build_prompt("llava_v1", QUESTION, 1)
    image = [png_b64((60, 40))]
    low = worker_answer(policy_workers["low"], prompt, image, "auto")
    high = worker_answer(policy_workers["high"], prompt, image, "auto")
    at_1 = worker_answer(policy_workers["low"], prompt, image, 1)
    at_576 = worker_answer(policy_workers["low"], prompt, image, 576)
    assert (low["answer"], high["answer"]) == (at_1["answer"], at_576["answer"])
    text_tokens = at_576["usage"]["prompt_tokens"] - 576
    assert low["usage"] == {
        "prompt_tokens": text_tokens + 1,
        "completion_tokens": low["usage"]["completion_tokens"],
        "total_tokens": text_tokens + 1 + low["usage"]["completion_tokens"],
        "visual_tokens": 1,
        "visual_tokens_processed": 1,
        "matryoshka_vis_token_scale": "auto",
        "matryoshka_vis_token_scale_used": 1,
    }
    assert high["usage"]["prompt_tokens"] == text_tokens + 576
    assert (high["usage"]["visual_tokens"], high["usage"]["visual_tokens_processed"]) == (576, 1 + 9 + 576)
    # A fixed budget reports the same fields, the budget asked for being the one used.
    assert at_1["usage"]["matryoshka_vis_token_scale"] == at_1["usage"]["matryoshka_vis_token_scale_used"] == 1
    assert at_1["usage"]["visual_tokens"] == at_1["usage"]["visual_tokens_processed"] == 1
    assert at_1["usage"]["prompt_tokens"] == text_tokens + 1


def test_a_text_only_prompt_answers_at_the_first_rung(policy_workers: dict[str, str]) -> None:
    final = worker_answer(policy_workers["high"], build_prompt("llava_v1", "Say something.", 0), [], "auto")
    assert final["usage"]["matryoshka_vis_token_scale_used"] == 1 and final["usage"]["visual_tokens"] == 0


def test_the_openai_api_takes_auto_in_extra_body(policy_workers: dict[str, str], tiny_llava_pad: Path) -> None:
    url = "data:image/png;base64," + png_b64((50, 70))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, QUESTION_PART]}]
    with openai.OpenAI(base_url=f"{policy_workers['high']}/v1", api_key="unused", max_retries=0) as client:
        request = dict(model=tiny_llava_pad.name, messages=messages, max_tokens=6, temperature=0)
        auto = client.chat.completions.create(**request, extra_body={"matryoshka_vis_token_scale": "auto"})
        fixed = client.chat.completions.create(**request, extra_body={"matryoshka_vis_token_scale": 576})
        chunks = list(
            client.chat.completions.create(
                **request,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"matryoshka_vis_token_scale": "auto"},
            )
        )
    assert auto.choices[0].message.content == fixed.choices[0].message.content
    assert (auto.model_extra["matryoshka_vis_token_scale"], auto.model_extra["matryoshka_vis_token_scale_used"]) == (
        "auto",
        576,
    )
    assert auto.usage.prompt_tokens == fixed.usage.prompt_tokens
    assert auto.usage.model_extra["visual_tokens_processed"] == 1 + 9 + 576
    assert fixed.usage.model_extra["visual_tokens_processed"] == 576
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == auto.choices[0].message.content
    (finish,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish.model_extra["matryoshka_vis_token_scale_used"] == 576
    assert chunks[-1].usage.model_dump() == auto.usage.model_dump()


@pytest.mark.parametrize("value", ["AUTO ", "Auto", "max", "", 3.5, True, [9, "auto"]])
def test_a_budget_that_is_neither_an_integer_nor_auto_is_a_400(policy_workers: dict[str, str], value: Any) -> None:
    prompt = build_prompt("llava_v1", QUESTION, 1)
    body = {"prompt": prompt, "images": [png_b64()], "max_new_tokens": 2, "matryoshka_vis_token_scale": value}
    response = httpx.post(f"{policy_workers['low']}/worker_generate_stream", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert 'or "auto"' in response.json()["text"] and "matryoshka_vis_token_scale" in response.json()["text"]


def test_what_an_image_costs_needs_a_fixed_budget(policy_workers: dict[str, str]) -> None:
    route = f"{policy_workers['low']}/worker_visual_tokens"
    response = httpx.post(route, json={"matryoshka_vis_token_scale": "auto"}, timeout=60)
    assert response.status_code == 400 and "one integer visual-token budget" in response.json()["text"]
    assert httpx.post(route, json={"matryoshka_vis_token_scale": 9}, timeout=60).json()["visual_tokens"] == 9


def test_the_status_says_what_auto_stands_for(policy_workers: dict[str, str], worker: BackgroundServer) -> None:
    calibrated = httpx.post(f"{policy_workers['high']}/worker_get_status").json()["matryoshka"]["auto"]
    assert calibrated == {
        "ladder": list(LADDER),
        "thresholds": [1.0, 1.0, 1.0],
        "signal": "p_first",
        "calibrated": True,
        "describe": "1 (>1) -> 9 (>1) -> 576",
    }
    default = httpx.post(f"{worker.url}/worker_get_status").json()["matryoshka"]["auto"]  # no policy file
    assert default["calibrated"] is False and default["ladder"] == [1, 9, 36, 144, 576]


# -- every budget side by side: /worker_compare_budgets ---------------------------------------------------------


def test_comparing_budgets_gives_each_fixed_answer_and_picture(policy_workers: dict[str, str]) -> None:
    url = policy_workers["low"]
    prompt = build_prompt("llava_v1", QUESTION, 1)
    image = png_b64((60, 40), (200, 40, 40))
    body = {"prompt": prompt, "images": [image], "temperature": 0, "max_new_tokens": 6}
    response = httpx.post(f"{url}/worker_compare_budgets", json=body, timeout=120)
    assert response.status_code == 200, response.text
    compared = response.json()
    assert compared["encode_seconds"] > 0
    scales = [answer["matryoshka_vis_token_scale"] for answer in compared["answers"]]
    assert scales == [1, 9, 36, 144, 576]  # the trained budgets, smallest first
    for answer in compared["answers"]:
        fixed = worker_answer(url, prompt, [image], answer["matryoshka_vis_token_scale"])
        assert answer["text"] == fixed["answer"]
        assert answer["visual_tokens"] == fixed["usage"]["visual_tokens"]
        assert answer["prompt_tokens"] == fixed["usage"]["prompt_tokens"]
        assert answer["seconds"] > 0 and 0 < answer["p_first"] <= 1
        (picture,) = answer["pictures"]
        assert picture.startswith("data:image/png;base64,")
        colours = Image.open(io.BytesIO(base64.b64decode(picture.split(",", 1)[1]))).getcolors(1 << 20)
        # The image padded to a square shows as sqrt(budget)^2 blocks: no more colours than blocks.
        assert colours is not None and 1 <= len(colours) <= answer["matryoshka_vis_token_scale"]
    assert len(Image.open(io.BytesIO(base64.b64decode(compared["answers"][-1]["pictures"][0][22:]))).getcolors()) > 2

    chosen = {**body, "matryoshka_vis_token_scales": [36, 1, 36]}
    answers = httpx.post(f"{url}/worker_compare_budgets", json=chosen, timeout=120).json()["answers"]
    assert [a["matryoshka_vis_token_scale"] for a in answers] == [1, 36]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"matryoshka_vis_token_scales": [10]}, "valid values: [1, 4, 9, 16, 36, 64, 144, 576]"),
        ({"matryoshka_vis_token_scales": []}, "matryoshka_vis_token_scales: List should have at least 1 item"),
        (
            {"matryoshka_vis_token_scales": list(range(1, 10))},
            "matryoshka_vis_token_scales: List should have at most 8",
        ),
        ({"matryoshka_vis_token_scales": ["auto"]}, "matryoshka_vis_token_scales.0: must be one integer"),
        ({"matryoshka_vis_token_scales": 9}, "matryoshka_vis_token_scales: Input should be a valid list"),
        ({"images": []}, "1 <image> placeholder(s) but 0 image(s)"),
        ({"images": ["not base64"]}, "image is neither base64 data nor a data: URL"),
        ({"max_new_tokens": 0}, "max_new_tokens: Input should be greater than or equal to 1"),
        ({"prompt": None}, "prompt: Input should be a valid string"),
        ({"model": "another-model"}, "this worker serves"),
    ],
)
def test_a_bad_comparison_is_a_4xx_that_says_why(policy_workers: dict[str, str], change: dict, expected: str) -> None:
    body = {"prompt": build_prompt("llava_v1", QUESTION, 1), "images": [png_b64()], "max_new_tokens": 2, **change}
    response = httpx.post(f"{policy_workers['low']}/worker_compare_budgets", json=body, timeout=60)
    assert response.status_code in (400, 404) and expected in response.json()["text"], response.text
