"""Video payloads without a server: which payloads are videos, the grid they become, and the limits on it."""

from __future__ import annotations

import argparse
import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import serve_folder

from llava.generation import ChatTurn, ChatVideo, build_chat_prompt
from llava.serve.args import parse_openai_api_args
from llava.serve.http import RequestError
from llava.serve.media import ImageLayout, ImagePolicy, VideoPolicy, decode_image
from llava.testing import read_frame_index, write_test_video
from llava.video import video_to_grid

POLICY = ImagePolicy(max_image_bytes=64 * 1024, max_image_pixels=512 * 512)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_video(tmp_path_factory.mktemp("video") / "clip.mp4", 60)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_a_video_payload_becomes_its_ig_vlm_grid(clip: Path) -> None:
    expected = video_to_grid(clip)
    for payload in (
        ChatVideo(f"data:video/mp4;base64,{b64(clip)}"),
        ChatVideo(b64(clip)),
        f"data:video/mp4;base64,{b64(clip)}",
    ):
        grid = decode_image(payload, POLICY)
        assert grid.size == (2 * 96, 3 * 64) and grid.tobytes() == expected.tobytes()
    # the frames IG-VLM picks from 60: every 10th, row by row
    assert [read_frame_index(grid.crop((x, y, x + 96, y + 64))) for y in (0, 64, 128) for x in (0, 96)] == [
        0, 10, 20, 30, 40, 50,
    ]  # fmt: skip


def test_the_grid_takes_the_policys_frame_count(clip: Path) -> None:
    four = ImagePolicy(video=VideoPolicy(num_frames=4))
    assert decode_image(ChatVideo(b64(clip)), four).size == (2 * 96, 2 * 64)
    with pytest.raises(ValueError, match="a video grid takes 1 to 64 frames, not 0"):
        VideoPolicy(num_frames=0)


def test_an_image_sent_as_a_video_is_refused_and_the_reverse_is_not_a_video(clip: Path) -> None:
    with pytest.raises(RequestError, match="media type 'image/png'; expected a video") as info:
        decode_image(ChatVideo(f"data:image/png;base64,{b64(clip)}"), POLICY)
    assert info.value.status == 400
    with pytest.raises(RequestError, match="payload is not a readable image"):
        decode_image(b64(clip), POLICY)  # plain base64 in the images list is an image
    with pytest.raises(RequestError, match="a video must be given as a string"):
        decode_image(ChatVideo(["not", "a", "string"]), POLICY)


def test_the_grid_is_checked_as_an_image_before_preprocessing(clip: Path) -> None:
    # 6 frames of 96x64 make a 192x192 grid: over a 30000-pixel limit as it is, and a tall grid
    # (4 frames of 96x64 in 2 rows: 192x128) padded to a square is over a 30000-pixel limit too.
    small = ImagePolicy(max_image_pixels=30_000)
    with pytest.raises(RequestError, match="the grid of 6 video frames of 192x192 pixels is over the limit") as info:
        decode_image(ChatVideo(b64(clip)), small)
    assert info.value.status == 413
    padded = ImagePolicy(max_image_pixels=30_000, video=VideoPolicy(num_frames=4))
    assert decode_image(ChatVideo(b64(clip)), padded).size == (192, 128)  # 24576 pixels, within the limit
    with pytest.raises(RequestError, match="grid of 4 video frames of 192x128 pixels would be padded to a square of"):
        decode_image(ChatVideo(b64(clip)), padded, ImageLayout("pad", 336))


def test_video_byte_limit_is_its_own(clip: Path) -> None:
    tight = ImagePolicy(max_image_bytes=10**9, video=VideoPolicy(max_video_bytes=1000))
    with pytest.raises(RequestError, match="video is larger than the limit of 1000 bytes") as info:
        decode_image(ChatVideo(b64(clip)), tight)
    assert info.value.status == 413
    roomy = ImagePolicy(max_image_bytes=10, video=VideoPolicy(max_video_bytes=10**6))
    assert decode_image(ChatVideo(b64(clip)), roomy).size == (192, 192)


@pytest.fixture()
def video_site(clip: Path) -> Iterator[str]:
    """A local http server with the clip, on 127.0.0.1."""
    with serve_folder(clip.parent) as url:
        yield url


def test_http_video_urls_are_fetched_only_when_allowed(clip: Path, video_site: str) -> None:
    url = ChatVideo(f"{video_site}/{clip.name}")
    with pytest.raises(RequestError, match="remote video URLs are not accepted .* --allow-remote-images"):
        decode_image(url, POLICY)
    allowed = ImagePolicy(allow_remote=True, remote_timeout_s=5)
    assert decode_image(url, allowed).tobytes() == video_to_grid(clip).tobytes()
    over = ImagePolicy(allow_remote=True, remote_timeout_s=5, video=VideoPolicy(max_video_bytes=100))
    with pytest.raises(RequestError, match="video at .* is larger than the limit of 100 bytes"):
        decode_image(url, over)


def test_server_flags_set_the_video_policy() -> None:
    base = ["--model-path", "unused"]
    defaults = VideoPolicy.from_args(parse_openai_api_args(base))
    assert defaults == VideoPolicy()
    args = parse_openai_api_args(
        [*base, "--max-video-bytes", "5", "--max-video-pixels", "6", "--max-video-seconds", "7.5"]
        + ["--max-video-frames", "8", "--video-num-frames", "4"]
    )
    policy = VideoPolicy.from_args(args)
    assert (policy.max_video_bytes, policy.num_frames) == (5, 4)
    assert (policy.limits.max_frame_pixels, policy.limits.max_duration_s, policy.limits.max_decoded_frames) == (
        6,
        7.5,
        8,
    )
    with pytest.raises(ValueError, match="not 0"):
        VideoPolicy.from_args(argparse.Namespace(**{**vars(args), "video_num_frames": 0}))


def test_a_video_takes_one_image_marker_where_it_stands() -> None:
    turns = [ChatTurn("user", [("text", "Compare"), ("image", "IMG"), ("video", "VID"), ("text", "please.")])]
    prompt, images, _ = build_chat_prompt(turns, "v1")
    assert "USER: Compare\n<image>\n<image>\nplease. ASSISTANT:" in prompt
    assert images == ["IMG", ChatVideo("VID")] and not isinstance(images[0], ChatVideo)
