"""A video in a request: the OpenAI API's `video_url` part and a `data:video/...` entry of the worker protocol's
`images`, answered by the shipped M3-Shapes model; and every bad video refused with a JSON 4xx that names the
problem, the server serving on.

The clips are written at test time (`llava.testing.write_test_video`): an M3-Shapes scene on one background
colour whose red square slides across, so the answer to "What color is the background?" is known.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from serve_helpers import REPO, png_b64, start_worker

from llava.generation import build_prompt
from llava.serve.http import BackgroundServer
from llava.testing import write_test_video

SHAPES_MODEL = REPO / "playground" / "shapes-m3-tiny"
QUESTION = "What color is the background?"
# Small limits, so that each refusal is cheap to reach with a real clip.
LIMITS = {
    "--max-video-bytes": 40_000,
    "--max-video-pixels": 100 * 100,
    "--max-video-seconds": 20,
    "--max-video-frames": 100,
}

pytestmark = pytest.mark.skipif(not (SHAPES_MODEL / "model.safetensors").exists(), reason="no shipped checkpoint")


def data_url(path: Path, media_type: str = "video/mp4") -> str:
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


def video_messages(url: str, role: str = "user") -> list[dict]:
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    return [{"role": role, "content": content}]


def chat(worker: BackgroundServer, messages: list[dict], **fields) -> httpx.Response:
    body = {"model": SHAPES_MODEL.name, "messages": messages, "max_tokens": 4, "temperature": 0, **fields}
    return httpx.post(f"{worker.url}/v1/chat/completions", json=body, timeout=60)


def worker_prompt(worker: BackgroundServer) -> str:
    """The question, laid out in the template the worker reports, as a worker protocol client does."""
    template = httpx.post(f"{worker.url}/worker_get_status").json()["matryoshka"]["conv_template"]
    return build_prompt(template, QUESTION, 1)


def generate(worker: BackgroundServer, payload: str, scale: int = 576) -> httpx.Response:
    """The worker protocol's `/worker_generate_stream` with one image (or video) payload."""
    body = {"prompt": worker_prompt(worker), "images": [payload], "temperature": 0, "max_new_tokens": 4}
    return httpx.post(
        f"{worker.url}/worker_generate_stream", json={**body, "matryoshka_vis_token_scale": scale}, timeout=60
    )


def last_chunk(response: httpx.Response) -> dict:
    return json.loads(response.content.rstrip(b"\0").split(b"\0")[-1])


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good clips on two backgrounds, and files that break one limit or rule each."""
    folder = tmp_path_factory.mktemp("clips")
    clips = {bg: write_test_video(folder / f"{bg}.mp4", 30, background=bg, counter=False) for bg in ("navy", "white")}
    clips["too many bytes"] = write_test_video(folder / "bytes.mp4", 1000, fps=100, keyframe_interval=1000)
    clips["too many frames to decode"] = write_test_video(folder / "dense.mp4", 400, fps=100, keyframe_interval=400)
    clips["too many pixels"] = write_test_video(folder / "large.mp4", 12, size=(320, 240))
    clips["too long"] = write_test_video(folder / "long.mp4", 30, fps=1)
    clips["too few frames"] = write_test_video(folder / "short.mp4", 3)
    whole = clips["navy"].read_bytes()
    clips["truncated"] = folder / "truncated.mp4"
    clips["truncated"].write_bytes(whole[: len(whole) // 2])
    # An HLS playlist: FFmpeg would read the file it names, here one of the server's own.
    clips["playlist"] = folder / "list.m3u8"
    clips["playlist"].write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nfile://{clips['navy']}\n")
    clips["not a video"] = folder / "text.mp4"
    clips["not a video"].write_bytes(b"this is not a video at all, only text " * 20)
    assert clips["too many bytes"].stat().st_size > LIMITS["--max-video-bytes"]
    assert all(path.stat().st_size < LIMITS["--max-video-bytes"] for name, path in clips.items() if "bytes" not in name)
    return clips


@pytest.fixture(scope="module")
def worker() -> Iterator[BackgroundServer]:
    server = start_worker(SHAPES_MODEL, extra=[str(item) for pair in LIMITS.items() for item in pair])
    yield server
    server.stop()


@pytest.mark.parametrize(("background", "scale"), [("navy", 576), ("navy", 9), ("white", 576), ("white", 9)])
def test_the_openai_client_asks_about_a_video(worker: BackgroundServer, clips, background: str, scale: int) -> None:
    client = OpenAI(base_url=f"{worker.url}/v1", api_key="unused")
    response = client.chat.completions.create(
        model=SHAPES_MODEL.name,
        messages=video_messages(data_url(clips[background])),
        max_tokens=4,
        temperature=0,
        extra_body={"matryoshka_vis_token_scale": scale},
    )
    assert response.choices[0].message.content == background
    assert response.usage.model_extra["visual_tokens"] == scale  # the grid is one image at the request's budget


def test_the_worker_protocol_takes_a_video_data_url(worker: BackgroundServer, clips) -> None:
    for background, scale in (("white", 36), ("navy", 1)):
        last = last_chunk(generate(worker, data_url(clips[background]), scale))
        assert last["error_code"] == 0 and last["usage"]["visual_tokens"] == scale, last
        assert last["text"].removeprefix(worker_prompt(worker)).strip() == background


# (clip, how it is sent, status, what the message must say)
BAD_VIDEOS = [
    ("not a video", "video/mp4", 400, "video: not a readable video"),
    ("truncated", "video/mp4", 400, "video: not a readable video"),
    ("playlist", "video/mp4", 400, "video: not a readable video"),
    ("too few frames", "video/mp4", 400, "fewer than the 6 frames asked for"),
    ("navy", "image/png", 400, "media type 'image/png'; expected a video"),
    ("too many bytes", "video/mp4", 413, f"video is larger than the limit of {LIMITS['--max-video-bytes']} bytes"),
    ("too many pixels", "video/mp4", 413, "frames of 320x240 pixels are over the limit of 10000 pixels"),
    ("too long", "video/mp4", 413, "30 s long; the limit is 20 s"),
    ("too many frames to decode", "video/mp4", 413, "decoded 100 frames without reaching the ones asked for"),
]


@pytest.mark.parametrize(("name", "media_type", "status", "message"), BAD_VIDEOS, ids=[b[0] for b in BAD_VIDEOS])
def test_a_bad_video_is_a_json_4xx_naming_the_problem(
    worker: BackgroundServer, clips, name: str, media_type: str, status: int, message: str
) -> None:
    url = data_url(clips[name], media_type)
    response = chat(worker, video_messages(url))
    assert response.status_code == status and message in response.json()["error"]["message"], response.text
    if media_type.startswith("video/"):  # the worker protocol carries it as one of its images
        refused = generate(worker, url)
        assert refused.status_code == status and message in refused.json()["text"], refused.text
    assert chat(worker, video_messages(data_url(clips["navy"]))).json()["choices"][0]["message"]["content"] == "navy"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:9/clip.mp4", "remote video URLs are not accepted by this server (start it with "),
        ("file:///etc/passwd", "the server never reads its own disk"),
        ("/etc/passwd", "video is neither base64 data nor a data: URL"),
        ("data:video/mp4,rawbytes", "video data: URLs must be base64-encoded (data:video/mp4;base64,...)"),
        ("", "video payload is empty"),
    ],
)
def test_video_urls_follow_the_image_rules(worker: BackgroundServer, url: str, message: str) -> None:
    response = chat(worker, video_messages(url))
    assert response.status_code == 400 and message in response.json()["error"]["message"], response.text


def test_video_parts_belong_to_user_messages(worker: BackgroundServer, clips) -> None:
    url = data_url(clips["navy"])
    messages = [*video_messages("x"), *video_messages(url, role="assistant"), {"role": "user", "content": "and?"}]
    response = chat(worker, messages)
    assert response.status_code == 400 and "only user messages may carry images or videos" in response.text
    empty = [{"role": "user", "content": [{"type": "video_url"}]}]
    response = chat(worker, empty)
    assert response.status_code == 400 and "a part of type 'video_url' needs the field 'video_url'" in response.text


def test_a_video_and_an_image_in_one_request(worker: BackgroundServer, clips) -> None:
    content = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64((96, 96), (128, 128, 128))}"}},
        {"type": "video_url", "video_url": data_url(clips["white"])},
        {"type": "text", "text": QUESTION},
    ]
    response = chat(worker, [{"role": "user", "content": content}], matryoshka_vis_token_scale=9)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["visual_tokens"] == 2 * 9  # one image and one grid
