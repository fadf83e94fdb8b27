"""Image and video payloads of a request → RGB PIL images, refusing anything the server should not read.

A request carries each image as base64 data (the worker protocol), a `data:` URL (the OpenAI format)
or, only when the operator allowed it, an http(s) URL. A file path or a `file://` URL is refused
without touching the disk: a server must never be talked into reading its own files.

A video travels the same ways and reaches the model as one image, IG-VLM's grid of a few of its frames
(`llava.video`), so it takes one `<image>` place in the prompt. A payload is a video when it comes as a
`ChatVideo` (an OpenAI `video_url` part) or as a `data:video/...` URL (how the worker protocol's
`images` list carries one).

Every allocation an image can cause is bounded before it is made: the encoded size, the decoded
pixels (read from the header, before decompressing) and the largest image the model's preprocessing
builds from it (`ImageLayout`: a 16384x1024 image within the pixel limit is padded to 16384x16384).
A video is bounded the same way: its encoded size, its frame size and duration (read from the
container header), the frames decoded to find the ones wanted, and its grid as an image.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import logging
import math
import re
from dataclasses import dataclass, field
from io import BytesIO

from PIL import Image, UnidentifiedImageError

from llava.generation import ChatVideo
from llava.serve.http import MIB, RequestError
from llava.video import DEFAULT_NUM_FRAMES, VideoError, VideoLimitError, VideoLimits, frames_to_grid, sample_frames

logger = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class VideoPolicy:
    """What the server accepts as a video; each limit is a flag of the servers (413 beyond one)."""

    max_video_bytes: int = 16 * MIB
    """Largest encoded video (after base64 decoding), checked before decoding it."""
    num_frames: int = DEFAULT_NUM_FRAMES
    """Frames in a video's grid (IG-VLM's 6: 2 per row, 3 rows)."""
    limits: VideoLimits = VideoLimits(max_frame_pixels=1920 * 1080, max_duration_s=3600.0, max_decoded_frames=3000)
    """Pixels per frame and duration, read from the header; frames decoded in all (time spent decoding)."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_frames <= self.limits.max_frames:
            raise ValueError(f"a video grid takes 1 to {self.limits.max_frames} frames, not {self.num_frames}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> VideoPolicy:
        """The policy the servers' video flags set (`--max-video-bytes`, ..., `--video-num-frames`)."""
        limits = VideoLimits(
            max_frame_pixels=args.max_video_pixels,
            max_duration_s=args.max_video_seconds,
            max_decoded_frames=args.max_video_frames,
        )
        return cls(max_video_bytes=args.max_video_bytes, num_frames=args.video_num_frames, limits=limits)


@dataclass(frozen=True)
class ImagePolicy:
    """What the server accepts as an image (a video is one: its frame grid); each limit is a flag of the servers."""

    max_image_bytes: int = 10 * MIB
    """Largest encoded image (after base64 decoding); more is a 413."""
    max_image_pixels: int = 4096 * 4096
    """Largest width × height; more is a 413 (also guards against decompression bombs)."""
    allow_remote: bool = False
    """Fetch http(s) image and video URLs (off by default: it lets clients make the server open connections)."""
    remote_timeout_s: float = 10.0
    video: VideoPolicy = field(default_factory=VideoPolicy)
    """What a video may cost; its grid is then held to the image limits above, as any image."""


@dataclass(frozen=True)
class ImageLayout:
    """How a model's preprocessing (`llava.mm_utils.process_images`) resizes an image, so the largest image it
    builds can be checked against the pixel limit before it is built."""

    aspect_ratio: str | None
    """The config's `image_aspect_ratio`: "pad", "anyres...", or None for the processor's own resize."""
    input_side: int
    """The side of the square the image processor outputs (336 for CLIP ViT-L/14-336)."""

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the largest image preprocessing makes from a `width` x `height` one."""
        if self.aspect_ratio == "pad":
            side = max(width, height)
            return side, side  # the square canvas the image is centred on
        if self.aspect_ratio is not None and self.aspect_ratio.startswith("anyres"):
            return width, height  # crops and base image are resized down to the grid pinpoints first
        scale = self.input_side / min(width, height)  # shortest edge to the input side, aspect ratio kept
        return math.ceil(width * scale), math.ceil(height * scale)


def check_pixels(
    width: int, height: int, policy: ImagePolicy, layout: ImageLayout | None = None, what: str = "image"
) -> None:
    """413 unless the image, and what preprocessing makes of it, stay within `policy.max_image_pixels`.

    `what` names the image in the messages (a video's grid is checked as an image too).
    """
    limit = policy.max_image_pixels
    if width < 1 or height < 1:
        raise RequestError(400, f"{what} of {width}x{height} pixels has no pixels")
    if width * height > limit:
        raise RequestError(413, f"{what} of {width}x{height} pixels is over the limit of {limit} pixels")
    if layout is None:
        return
    work_w, work_h = layout.working_size(width, height)
    if work_w * work_h > limit:
        how = "padded to a square of" if layout.aspect_ratio == "pad" else "resized to"
        raise RequestError(
            413,
            f"{what} of {width}x{height} pixels would be {how} {work_w}x{work_h} pixels for this model, over the "
            f"limit of {limit} pixels (--max-image-pixels); crop it or make it less elongated",
        )


def decode_image(source: str | ChatVideo, policy: ImagePolicy, layout: ImageLayout | None = None) -> Image.Image:
    """One payload of a request's images → the RGB image the model sees; raises `RequestError` (400 or 413).

    An image payload gives the image; a video payload (a `ChatVideo`, or a `data:video/...` URL) gives
    its frame grid. With `layout`, images that the model's preprocessing would enlarge beyond the pixel
    limit are refused too.
    """
    kind = "image"
    if isinstance(source, ChatVideo):
        kind, source = "video", source.source
    if not isinstance(source, str):
        raise RequestError(
            400, f"{_KINDS[kind][0]} must be given as a string (base64 or URL), got {type(source).__name__}"
        )
    source = source.strip()
    if source[: len("data:video/")].lower() == "data:video/":
        kind = "video"
    raw = _payload_bytes(source, policy, kind)
    return open_video(raw, policy, layout) if kind == "video" else open_image(raw, policy, layout)


_KINDS = {
    "image": ("an image", "image/png, image/jpeg, ...", "data:image/png;base64,..."),
    "video": ("a video", "video/mp4, video/webm, ...", "data:video/mp4;base64,..."),
}
"""Per kind of payload: how messages name one, its media types, an example data: URL."""


def _max_bytes(policy: ImagePolicy, kind: str) -> int:
    return policy.video.max_video_bytes if kind == "video" else policy.max_image_bytes


def _payload_bytes(source: str, policy: ImagePolicy, kind: str) -> bytes:
    """The bytes of an image or video payload (base64, a data: URL, or an allowed http(s) URL)."""
    scheme_match = _SCHEME.match(source)
    scheme = scheme_match.group(1).lower() if scheme_match else None
    if scheme == "data":
        return _data_url_bytes(source, policy, kind)
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise RequestError(
                400,
                f"remote {kind} URLs are not accepted by this server (start it with --allow-remote-images); "
                f"send the {kind} inline as a base64 data: URL",
            )
        return fetch_bytes(source, policy, kind)
    if scheme is not None and len(scheme) > 1:  # one letter is a Windows drive, refused below as non-base64
        raise RequestError(
            400,
            f"{kind} URLs with the scheme {scheme!r} are not accepted: the server never reads its own disk or "
            f"other local resources; send the {kind} inline as base64 or a data: URL",
        )
    return b64decode_payload(source, policy, kind)


def _data_url_bytes(url: str, policy: ImagePolicy, kind: str) -> bytes:
    header, comma, data = url.partition(",")
    if not comma:
        raise RequestError(400, "malformed data: URL (no comma before the data)")
    media_type, *params = header[len("data:") :].split(";")
    article, media_types, example = _KINDS[kind]
    if "base64" not in params:
        raise RequestError(400, f"{kind} data: URLs must be base64-encoded ({example})")
    if media_type and not media_type.lower().startswith(f"{kind}/"):
        raise RequestError(400, f"data: URL has media type {media_type!r}; expected {article} ({media_types})")
    return b64decode_payload(data, policy, kind)


def b64decode_payload(data: str, policy: ImagePolicy, kind: str = "image") -> bytes:
    """Strict base64 → bytes, refusing (413) payloads over the size limit of their kind before decoding them."""
    data = _WHITESPACE.sub("", data)
    limit = _max_bytes(policy, kind)
    if len(data) * 3 // 4 > limit + 2:
        raise RequestError(413, f"{kind} is larger than the limit of {limit} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            400,
            f"{kind} is neither base64 data nor a data: URL (file paths are never read from the server's disk)",
        ) from None
    if not raw:
        raise RequestError(400, f"{kind} payload is empty")
    return raw


def fetch_bytes(url: str, policy: ImagePolicy, kind: str = "image") -> bytes:
    """Download an http(s) image or video, reading at most its kind's byte limit (413 beyond, 400 on failure)."""
    import httpx  # only servers started with --allow-remote-images need it

    limit = _max_bytes(policy, kind)
    try:
        with httpx.Client(timeout=policy.remote_timeout_s, follow_redirects=True, max_redirects=3) as client:
            with client.stream("GET", url, headers={"User-Agent": "llava-m3"}) as response:
                if response.status_code != 200:
                    raise RequestError(400, f"cannot download {kind} {url}: HTTP {response.status_code}")
                if response.url.scheme not in ("http", "https"):
                    raise RequestError(400, f"cannot download {kind} {url}: redirected to {response.url.scheme}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise RequestError(413, f"{kind} at {url} is larger than the limit of {limit} bytes")
                    chunks.append(chunk)
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise RequestError(400, f"cannot download {kind} {url}: {e}") from e
    return b"".join(chunks)


def open_image(raw: bytes, policy: ImagePolicy, layout: ImageLayout | None = None) -> Image.Image:
    """Decode image bytes to RGB, checking the pixel counts (`check_pixels`) before the pixels are decompressed."""
    if len(raw) > policy.max_image_bytes:
        raise RequestError(413, f"image is larger than the limit of {policy.max_image_bytes} bytes")
    try:
        with Image.open(BytesIO(raw)) as image:
            check_pixels(*image.size, policy, layout)
            return image.convert("RGB")
    except Image.DecompressionBombError:
        raise RequestError(413, f"image is over the limit of {policy.max_image_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise RequestError(400, f"payload is not a readable image: {e}") from None


def open_video(raw: bytes, policy: ImagePolicy, layout: ImageLayout | None = None) -> Image.Image:
    """Video bytes → the IG-VLM grid of `policy.video.num_frames` of its frames (`llava.video`), RGB.

    The frame size and duration are checked from the header and the frames decoded are counted as they
    are (413 beyond `policy.video.limits`), so at most `num_frames` frames within the frame limit are
    held; the grid they make is then checked as an image (`check_pixels`) before preprocessing sees it.
    """
    video = policy.video
    if len(raw) > video.max_video_bytes:
        raise RequestError(413, f"video is larger than the limit of {video.max_video_bytes} bytes")
    data = BytesIO(raw)
    data.name = "video"  # what llava.video's messages call it
    try:
        frames = sample_frames(data, video.num_frames, limits=video.limits)
    except VideoLimitError as e:
        raise RequestError(413, str(e)) from None
    except VideoError as e:
        raise RequestError(400, str(e)) from None
    grid = frames_to_grid(frames)
    check_pixels(*grid.size, policy, layout, what=f"the grid of {len(frames)} video frames")
    return grid


def png_data_url(image: Image.Image) -> str:
    """An image as a `data:image/png;base64,...` URL (what the OpenAI format and browsers read)."""
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
