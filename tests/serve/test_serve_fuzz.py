"""Property-based fuzzing of every route of the controller, a worker and the OpenAI API.

Schemathesis generates requests from each app's OpenAPI schema, some that fit each route's schema and
some that break it (wrong types, missing fields, out-of-range numbers, odd strings). Hypothesis then
puts hostile JSON into one field of a valid body at a time: NaN, Infinity, 9.0, thousands of digits,
lone surrogates, deep nesting, values of every other type, which a schema-driven generator does not
write; and sends real video clips broken the ways files break (cut short, bytes changed, inserted or
spliced from another clip, another format's header) as videos. Each app gets a few hundred requests.
None may be a 5xx, no answer may carry a failed generation, every refusal must be JSON, and the server
must serve a normal request afterwards. The examples are derandomized, so a failure reproduces on the
next run.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from schemathesis.generation import GenerationMode
from serve_helpers import png_b64, start_controller, start_worker, wait_for

from llava.serve import openai_api
from llava.serve.http import BackgroundServer
from llava.serve.protocol import WorkerAddress
from llava.serve.service import service_from_args
from llava.testing import write_test_video

EXAMPLES_PER_APP = 300
HOSTILE_PER_APP = 150
BROKEN_VIDEOS = 150
KEY = "fuzz-key"
SMALL = ["--max-new-tokens-limit", "3", "--max-request-bytes", str(256 * 1024), "--max-image-pixels", str(512 * 512)]


FUZZ_SETTINGS = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def check_answer(where: str, status: int, content_type: str, body: bytes) -> None:
    """No 5xx, JSON refusals, and no failed generation hidden in a successful stream."""
    assert status < 500, f"{where} → {status} {body[:500]!r}"
    if status >= 400:
        assert content_type.startswith("application/json"), f"{where} → {body[:500]!r}"
    assert b'"error_code": 5' not in body and b'"server_error"' not in body, f"{where} → {body[:500]!r}"


def fuzz(server: BackgroundServer, headers: dict[str, str] | None = None, adapt: Callable[[Any], Any] = None) -> None:
    """`EXAMPLES_PER_APP` requests generated from the server's OpenAPI schema, valid and invalid."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    if adapt is not None:
        cases = cases.map(adapt)
    statuses: list[int] = []

    @settings(FUZZ_SETTINGS, max_examples=EXAMPLES_PER_APP)
    @given(case=cases)
    def run(case: Any) -> None:
        response = case.call(headers=headers, timeout=120)
        content_type = response.headers.get("content-type", [""])[0]  # schemathesis lists each header's values
        check_answer(
            f"{case.method} {case.path} {case.body!r:.300}", response.status_code, content_type, response.content
        )
        statuses.append(response.status_code)

    run()
    assert len(statuses) >= EXAMPLES_PER_APP
    assert any(status < 300 for status in statuses) and any(status == 400 for status in statuses)


HOSTILE_JSON = [
    "9.0", "9.5", "3.5", "1e308", "-1e308", "1e-400", "5e-324", "NaN", "-Infinity", "true", '"9"', '"auto"',
    '"AUTO "', '"max"', "[]", "{}",
    "9" * 5000, "-" + "9" * 30, "[" * 100_000 + "]" * 100_000, '"\\ud800"', '"a\\udfffb"', '"\\u0000"',
]  # fmt: skip


def json_values() -> st.SearchStrategy[str]:
    """JSON texts a hostile or careless client puts where a field's value goes: half from a list of known
    troublemakers, half generated."""
    generated = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),  # json.dumps writes NaN and Infinity
        st.text(st.characters(exclude_categories=())),  # lone surrogates included, written as \ud800 escapes
        st.lists(st.integers() | st.text(), max_size=4),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    ).map(json.dumps)
    return st.one_of(st.sampled_from(HOSTILE_JSON), generated)


def fuzz_fields(server: BackgroundServer, bodies: dict[str, dict[str, Any]], headers: dict[str, str] | None = None):
    """`HOSTILE_PER_APP` requests: a valid body for one route with one field (or a new one) made hostile."""
    routes = sorted(bodies)

    @settings(FUZZ_SETTINGS, max_examples=HOSTILE_PER_APP)
    @given(route=st.sampled_from(routes), data=st.data(), value=json_values())
    def run(route: str, data: st.DataObject, value: str) -> None:
        body = dict(bodies[route])
        field = data.draw(st.sampled_from([*body, "matryoshka_vis_token_scale", "max_new_tokens", "unknown"]))
        body[field] = "\0HOSTILE\0"
        raw = json.dumps(body).replace('"\\u0000HOSTILE\\u0000"', value).encode()
        response = httpx.post(
            f"{server.url}{route}",
            content=raw,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=120,
        )
        where = f"POST {route} {raw[:300]!r}"
        check_answer(where, response.status_code, response.headers.get("content-type", ""), response.content)

    run()


GENERATE = {"prompt": "USER: hi ASSISTANT:", "max_new_tokens": 2, "temperature": 0.5}


def generate(url: str, model: str | None = None) -> httpx.Response:
    body = {"prompt": "USER: <image>\nWhat? ASSISTANT:", "images": [png_b64()], "max_new_tokens": 2}
    return httpx.post(f"{url}/worker_generate_stream", json={**body, "model": model} if model else body, timeout=60)


@pytest.fixture(scope="module")
def fuzz_worker(tiny_llava_pad: Path) -> Iterator[BackgroundServer]:
    server = start_worker(tiny_llava_pad, extra=SMALL)
    yield server
    server.stop()


@pytest.mark.slow
def test_fuzzing_the_worker_never_gets_a_server_error(fuzz_worker: BackgroundServer, tiny_llava_pad: Path) -> None:
    fuzz(fuzz_worker)
    chat = {"model": tiny_llava_pad.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    fuzz_fields(
        fuzz_worker,
        {
            "/worker_generate_stream": GENERATE,
            "/worker_compare_budgets": {**GENERATE, "matryoshka_vis_token_scales": [1, 9]},
            "/worker_visual_tokens": {},
            "/v1/chat/completions": chat,
        },
    )
    answer = generate(fuzz_worker.url)
    assert answer.status_code == 200 and b'"finish_reason": "length"' in answer.content
    status = httpx.post(f"{fuzz_worker.url}/worker_get_status").json()
    wait_for(lambda: httpx.post(f"{fuzz_worker.url}/worker_get_status").json()["queue_length"] == 0, what="idle")
    assert status["requests_generated"] > 1


@pytest.mark.slow
def test_fuzzing_the_openai_api_never_gets_a_server_error(tiny_llava_anyres: Path) -> None:
    args = openai_api.parse_args(["--model-path", str(tiny_llava_anyres), "--device", "cpu", *SMALL])
    with BackgroundServer(openai_api.create_app(service_from_args(args))) as server:
        fuzz(server)
        chat = {"model": tiny_llava_anyres.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        fuzz_fields(server, {"/v1/chat/completions": chat})
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2


@pytest.mark.slow
def test_fuzzing_the_controller_never_gets_a_server_error(fuzz_worker: BackgroundServer, tiny_llava_pad: Path) -> None:
    """With the worker key, so registration and heartbeats are fuzzed too.

    Worker addresses that would pass validation are pointed at the real worker, so that the controller
    never contacts random hosts (slow DNS, or a 503 for an unreachable worker, which is right).
    """
    address = TypeAdapter(WorkerAddress)

    def at_the_real_worker(case: Any) -> Any:
        if isinstance(case.body, dict) and isinstance(case.body.get("worker_name"), str):
            try:
                address.validate_python(case.body["worker_name"])
            except ValidationError:
                return case
            case.body["worker_name"] = fuzz_worker.url
        return case

    controller = start_controller(worker_key=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        status = httpx.post(f"{fuzz_worker.url}/worker_get_status").json()
        register = {"worker_name": fuzz_worker.url, "worker_status": status}
        assert httpx.post(f"{controller.url}/register_worker", json=register, headers=auth).status_code == 200
        fuzz(controller, headers=auth, adapt=at_the_real_worker)
        bodies = {
            "/worker_generate_stream": {**GENERATE, "model": tiny_llava_pad.name},
            "/get_worker_address": {"model": tiny_llava_pad.name},
            "/receive_heart_beat": {"worker_name": fuzz_worker.url, "queue_length": 0},
            "/register_worker": register,
        }
        fuzz_fields(controller, bodies, headers=auth)
        assert httpx.post(f"{controller.url}/refresh_all_workers").json() == {"workers": [fuzz_worker.url]}
        assert httpx.post(f"{controller.url}/list_models").json() == {"models": [tiny_llava_pad.name]}
        answer = generate(controller.url, tiny_llava_pad.name)
        assert answer.status_code == 200 and b'"finish_reason": "length"' in answer.content
    finally:
        controller.stop()


def broken_videos(clips: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Real clips broken the ways files break: cut short, bytes changed, bytes inserted, two clips spliced
    together, and another format's header (a playlist, a concat list, RIFF, GIF) before random bytes."""
    clip = st.sampled_from(clips)
    cut = st.tuples(clip, st.floats(0, 1)).map(lambda c: c[0][: int(len(c[0]) * c[1])])
    changes = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=32)

    def changed(c: tuple[bytes, list[tuple[float, int]]]) -> bytes:
        data = bytearray(c[0])
        for where, value in c[1]:
            data[int(where * len(data))] = value
        return bytes(data)

    def inserted(c: tuple[bytes, float, bytes]) -> bytes:
        at = int(c[1] * len(c[0]))
        return c[0][:at] + c[2] + c[0][at:]

    def spliced(c: tuple[bytes, bytes, float, float]) -> bytes:
        return c[0][: int(c[2] * len(c[0]))] + c[1][int(c[3] * len(c[1])) :]

    unit = st.floats(0, 1)
    headers = [
        b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n",
        b"ffconcat version 1.0\nfile /etc/passwd\n",
        b"RIFF",
        b"GIF89a",
    ]
    return st.one_of(
        cut,
        st.tuples(clip, changes).map(changed),
        st.tuples(clip, unit, st.binary(min_size=1, max_size=64)).map(inserted),
        st.tuples(clip, clip, unit, unit).map(spliced),
        st.tuples(st.sampled_from(headers), st.binary(max_size=512)).map(lambda c: c[0] + c[1]),
    )


@pytest.mark.slow
def test_fuzzing_videos_never_gets_a_server_error(fuzz_worker: BackgroundServer, tiny_llava_pad: Path, tmp_path: Path):
    """Broken videos as OpenAI `video_url` parts and as the worker protocol's `data:video/...` images."""
    codecs = {"clip.mp4": "libx264", "clip.avi": "mpeg4", "clip.mkv": "libx264", "clip.webm": "libvpx"}
    clips = [write_test_video(tmp_path / name, 40, codec=codec).read_bytes() for name, codec in codecs.items()]
    statuses: list[int] = []

    def ask(video: bytes, route: str) -> httpx.Response:
        url = f"data:video/mp4;base64,{base64.b64encode(video).decode()}"
        if route == "/worker_generate_stream":
            body = {"prompt": "USER: <image>\nWhat? ASSISTANT:", "images": [url], "max_new_tokens": 2}
        else:
            content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What?"}]
            body = {"model": tiny_llava_pad.name, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
        return httpx.post(f"{fuzz_worker.url}{route}", json=body, timeout=120)

    @settings(FUZZ_SETTINGS, max_examples=BROKEN_VIDEOS)
    @given(video=broken_videos(clips), route=st.sampled_from(["/worker_generate_stream", "/v1/chat/completions"]))
    def run(video: bytes, route: str) -> None:
        response = ask(video, route)
        where = f"POST {route} with a broken video of {len(video)} bytes"
        check_answer(where, response.status_code, response.headers.get("content-type", ""), response.content)
        statuses.append(response.status_code)

    run()
    assert 200 in statuses and 400 in statuses  # some breakages still decode, most do not
    for clip in clips:
        assert ask(clip, "/v1/chat/completions").json()["usage"]["completion_tokens"] == 2
