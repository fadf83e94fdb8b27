"""Hostile and careless input, as a client sends it over HTTP: every refusal is a JSON 4xx naming the field or
the limit, an unexpected failure is a JSON 500 with a logged request id, and the servers keep serving."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serve_helpers import png_b64, start_controller, start_worker, wait_for

from llava.mm_utils import expand2square
from llava.serve.http import BackgroundServer, RequestError, create_json_app
from llava.serve.media import ImageLayout, ImagePolicy, decode_image

PROMPT = "USER: <image>\nWhat is in the image? ASSISTANT:"

# (name, raw JSON of the value): what careless or hostile clients send where one integer belongs.
HOSTILE_SCALES = [
    ("float", b"9.0"),
    ("fraction", b"9.5"),
    ("huge float", b"1e308"),
    ("NaN", b"NaN"),
    ("Infinity", b"Infinity"),
    ("bool", b"true"),
    ("string", b'"9"'),
    ("5000 digits", b"9" * 5000),
    ("list", b"[9, 36]"),
    ("auto with a space", b'"AUTO "'),
    ("max", b'"max"'),
    ("auto in a list", b'["auto"]'),
]


@pytest.fixture(scope="module")
def stack(worker: BackgroundServer, tiny_llava_pad: Path) -> Iterator[tuple[BackgroundServer, BackgroundServer]]:
    """The module's worker, registered by hand with a controller (which serves the same model name)."""
    controller = start_controller()
    status = httpx.post(f"{worker.url}/worker_get_status").json()
    registered = httpx.post(
        f"{controller.url}/register_worker", json={"worker_name": worker.url, "worker_status": status}
    )
    assert registered.status_code == 200, registered.text
    yield controller, worker
    controller.stop()


def post_raw(url: str, body: bytes) -> httpx.Response:
    return httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=60)


def error_text(response: httpx.Response) -> str:
    """The message of a JSON error in either shape (LLaVA worker or OpenAI)."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    return body["error"]["message"] if "error" in body else body["text"]


def routes(stack: tuple[BackgroundServer, BackgroundServer], model: str) -> dict[str, tuple[str, bytes]]:
    """Each route that takes a scale, and a body for it with `SCALE` where the hostile value goes."""
    controller, worker = stack
    prompt = b'"prompt": "USER: hi ASSISTANT:", "max_new_tokens": 2'
    chat = b'"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2'
    return {
        "worker": (f"{worker.url}/worker_generate_stream", b"{" + prompt + b', "matryoshka_vis_token_scale": SCALE}'),
        "visual tokens": (f"{worker.url}/worker_visual_tokens", b'{"matryoshka_vis_token_scale": SCALE}'),
        "openai": (
            f"{worker.url}/v1/chat/completions",
            b'{"model": "' + model.encode() + b'", ' + chat + b', "matryoshka_vis_token_scale": SCALE}',
        ),
        "controller": (
            f"{controller.url}/worker_generate_stream",
            b'{"model": "' + model.encode() + b'", ' + prompt + b', "matryoshka_vis_token_scale": SCALE}',
        ),
    }


@pytest.mark.parametrize(("kind", "value"), HOSTILE_SCALES, ids=[name for name, _ in HOSTILE_SCALES])
def test_a_scale_that_is_not_one_integer_is_a_400_naming_the_field(stack, tiny_llava_pad: Path, kind, value) -> None:
    for route, (url, template) in routes(stack, tiny_llava_pad.name).items():
        response = post_raw(url, template.replace(b"SCALE", value))
        assert response.status_code == 400, (route, response.text)
        message = error_text(response)
        assert "matryoshka_vis_token_scale" in message and "integer" in message, (route, message)
        assert "1, 9, 36, 144 or 576" in message, (route, message)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"prompt": "hi \\ud800 there"}', "prompt: text must be valid Unicode; it has a lone surrogate \\ud800"),
        (b'{"prompt": "hi", "stop": ["\\udfff"]}', "stop"),
        (b'{"prompt": "hi", "max_new_tokens": ' + b"7" * 5000 + b"}", "max_new_tokens: Input should be less than"),
        (b'{"prompt": "hi", "temperature": NaN}', "temperature: Input should be a finite number"),
        (b'{"prompt": "hi", "top_p": -Infinity}', "top_p: Input should be a finite number"),
        (b'{"prompt": "hi", "max_new_tokens": 2.0}', "max_new_tokens: Input should be a valid integer"),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"prompt": "\xff\xfe"}', "not UTF-8"),
        (b'{"prompt": "hi",', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "no body"),
        (b'{"images": ["x"]}', "prompt: Field required"),
    ],
)
def test_malformed_bodies_are_a_400_that_says_what_is_wrong(stack, body: bytes, expected: str) -> None:
    _, worker = stack
    response = post_raw(f"{worker.url}/worker_generate_stream", body)
    assert response.status_code == 400 and expected in error_text(response), response.text


def test_openai_errors_name_the_field_in_param(stack, tiny_llava_pad: Path) -> None:
    _, worker = stack
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "video", "text": "x"}]}]
    response = httpx.post(
        f"{worker.url}/v1/chat/completions", json={"model": tiny_llava_pad.name, "messages": messages}
    )
    error = response.json()["error"]
    assert response.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == "messages.0.content"
    assert "messages.0.content: Input should be a valid string" in error["message"]
    assert "messages.0.content.1.type: Input should be 'text', 'image_url' or 'video_url'" in error["message"]


def test_unknown_routes_and_methods_answer_json(stack) -> None:
    controller, worker = stack
    for response, status in (
        (httpx.get(f"{worker.url}/no-such-route"), 404),
        (httpx.get(f"{worker.url}/worker_generate_stream"), 405),
        (httpx.post(f"{controller.url}/no-such-route"), 404),
        (httpx.get(f"{worker.url}/v1/nothing"), 404),
    ):
        assert response.status_code == status and error_text(response)


def test_an_unexpected_failure_is_a_json_500_with_a_logged_request_id(caplog: pytest.LogCaptureFixture) -> None:
    # A route that fails the way a bug would, in an app assembled like every server's.
    app = create_json_app("failing", max_request_bytes=1024)

    @app.post("/crash")
    async def crash() -> None:
        raise ZeroDivisionError("a bug")

    @app.post("/v1/crash")
    async def crash_openai() -> None:
        raise KeyError("a bug")

    with BackgroundServer(app) as server, caplog.at_level(logging.ERROR, logger="llava.serve.http"):
        plain = httpx.post(f"{server.url}/crash")
        openai_shaped = httpx.post(f"{server.url}/v1/crash")
    assert plain.status_code == 500 and plain.json()["error_code"] == 500
    request_id = plain.json()["request_id"]
    assert request_id in plain.json()["text"] and "a bug" not in plain.text  # no internals leak to the client
    assert openai_shaped.status_code == 500 and openai_shaped.json()["error"]["type"] == "server_error"
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None and logged[0].exc_info[0] is ZeroDivisionError


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_elongated_image_is_refused_before_it_is_padded(tmp_path: Path, tiny_llava_pad: Path) -> None:
    """A 16384x1024 PNG (17 KB, within the 4096² pixel limit) would be padded to 16384²: 4 GB to process."""
    panorama = png((16384, 1024))
    assert len(panorama) < 64 * 1024 and 16384 * 1024 <= 4096 * 4096
    worker = start_worker(tiny_llava_pad, extra=["--max-image-bytes", str(1 << 20)])  # default pixel limit
    try:
        image = base64.b64encode(panorama).decode()
        response = httpx.post(
            f"{worker.url}/worker_generate_stream", json={"prompt": PROMPT, "images": [image]}, timeout=60
        )
        assert response.status_code == 413, response.text
        message = response.json()["text"]
        assert "16384x1024" in message and "16384x16384" in message and str(4096 * 4096) in message
        assert "--max-image-pixels" in message
        fits = base64.b64encode(png((4096, 4096 // 4))).decode()  # padded to 4096², exactly the limit
        answer = httpx.post(
            f"{worker.url}/worker_generate_stream",
            json={"prompt": PROMPT, "images": [fits], "max_new_tokens": 1},
            timeout=120,
        )
        assert answer.status_code == 200 and b'"finish_reason"' in answer.content
    finally:
        worker.stop()


@pytest.mark.parametrize("size", [(60, 40), (40, 60), (33, 33), (1, 7)])
def test_the_pad_layout_is_the_canvas_expand2square_makes(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size)
    assert expand2square(image, (0, 0, 0)).size == ImageLayout("pad", 336).working_size(*size)


def test_the_processors_own_resize_is_bounded_too() -> None:
    """Without padding, the processor scales the shortest edge to its input side: 4096x4 would be 336x344064."""
    policy = ImagePolicy(max_image_pixels=4096 * 4096)
    layout = ImageLayout(None, 336)
    assert layout.working_size(4096, 4) == (344064, 336)
    with pytest.raises(RequestError, match="resized to 344064x336"):
        decode_image(base64.b64encode(png((4096, 4))).decode(), policy, layout)
    anyres = ImageLayout("anyres", 336)
    assert decode_image(base64.b64encode(png((4096, 4))).decode(), policy, anyres).size == (4096, 4)


def test_images_inside_the_limits_decode_to_the_same_pixels() -> None:
    source = Image.effect_noise((97, 61), 64).convert("RGB")
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    layout = ImageLayout("pad", 336)
    decoded = decode_image(base64.b64encode(buffer.getvalue()).decode(), ImagePolicy(), layout)
    assert decoded.tobytes() == source.tobytes()


def test_the_worker_serves_after_all_of_it(stack) -> None:
    controller, worker = stack
    body = {"prompt": PROMPT, "images": [png_b64()], "max_new_tokens": 2, "temperature": 0}
    for url in (f"{worker.url}/worker_generate_stream", f"{controller.url}/worker_generate_stream"):
        model = httpx.post(f"{worker.url}/worker_get_status").json()["model_names"][0]
        response = httpx.post(url, json={**body, "model": model}, timeout=60)
        assert response.status_code == 200 and b'"finish_reason": "length"' in response.content
    wait_for(lambda: httpx.post(f"{worker.url}/worker_get_status").json()["queue_length"] == 0, what="an idle worker")
