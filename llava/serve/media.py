"""Image payloads of a request → RGB PIL images, refusing anything the server should not read.

A request carries each image as base64 data (the worker protocol), a `data:` URL (the OpenAI format)
or, only when the operator allowed it, an http(s) URL. A file path or a `file://` URL is refused
without touching the disk: a server must never be talked into reading its own files.

Every allocation an image can cause is bounded before it is made: the encoded size, the decoded
pixels (read from the header, before decompressing) and the largest image the model's preprocessing
builds from it (`ImageLayout`: a 16384x1024 image within the pixel limit is padded to 16384x16384).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, UnidentifiedImageError

from llava.serve.http import MIB, RequestError

logger = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ImagePolicy:
    """What the server accepts as an image; each limit is a flag of the servers."""

    max_image_bytes: int = 10 * MIB
    """Largest encoded image (after base64 decoding); more is a 413."""
    max_image_pixels: int = 4096 * 4096
    """Largest width × height; more is a 413 (also guards against decompression bombs)."""
    allow_remote: bool = False
    """Fetch http(s) image URLs (off by default: it lets clients make the server open connections)."""
    remote_timeout_s: float = 10.0


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


def check_pixels(width: int, height: int, policy: ImagePolicy, layout: ImageLayout | None = None) -> None:
    """413 unless the image, and what preprocessing makes of it, stay within `policy.max_image_pixels`."""
    limit = policy.max_image_pixels
    if width < 1 or height < 1:
        raise RequestError(400, f"image of {width}x{height} pixels has no pixels")
    if width * height > limit:
        raise RequestError(413, f"image of {width}x{height} pixels is over the limit of {limit} pixels")
    if layout is None:
        return
    work_w, work_h = layout.working_size(width, height)
    if work_w * work_h > limit:
        how = "padded to a square of" if layout.aspect_ratio == "pad" else "resized to"
        raise RequestError(
            413,
            f"image of {width}x{height} pixels would be {how} {work_w}x{work_h} pixels for this model, over the "
            f"limit of {limit} pixels (--max-image-pixels); crop it or make it less elongated",
        )


def decode_image(source: str, policy: ImagePolicy, layout: ImageLayout | None = None) -> Image.Image:
    """One image payload → an RGB image; raises `RequestError` (400 or 413) for anything else.

    With `layout`, images that the model's preprocessing would enlarge beyond the pixel limit are refused too.
    """
    if not isinstance(source, str):
        raise RequestError(400, f"an image must be given as a string (base64 or URL), got {type(source).__name__}")
    source = source.strip()
    scheme_match = _SCHEME.match(source)
    scheme = scheme_match.group(1).lower() if scheme_match else None
    if scheme == "data":
        return open_image(_data_url_bytes(source, policy), policy, layout)
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise RequestError(
                400,
                "remote image URLs are not accepted by this server (start it with --allow-remote-images); "
                "send the image inline as a base64 data: URL",
            )
        return open_image(fetch_image_bytes(source, policy), policy, layout)
    if scheme is not None and len(scheme) > 1:  # one letter is a Windows drive, refused below as non-base64
        raise RequestError(
            400,
            f"image URLs with the scheme {scheme!r} are not accepted: the server never reads its own disk or "
            "other local resources; send the image inline as base64 or a data: URL",
        )
    return open_image(b64decode_image(source, policy), policy, layout)


def _data_url_bytes(url: str, policy: ImagePolicy) -> bytes:
    header, comma, data = url.partition(",")
    if not comma:
        raise RequestError(400, "malformed data: URL (no comma before the data)")
    media_type, *params = header[len("data:") :].split(";")
    if "base64" not in params:
        raise RequestError(400, "image data: URLs must be base64-encoded (data:image/png;base64,...)")
    if media_type and not media_type.lower().startswith("image/"):
        raise RequestError(
            400, f"data: URL has media type {media_type!r}; expected an image (image/png, image/jpeg, ...)"
        )
    return b64decode_image(data, policy)


def b64decode_image(data: str, policy: ImagePolicy) -> bytes:
    """Strict base64 → bytes, refusing (413) payloads over the size limit before decoding them."""
    data = _WHITESPACE.sub("", data)
    if len(data) * 3 // 4 > policy.max_image_bytes + 2:
        raise RequestError(413, f"image is larger than the limit of {policy.max_image_bytes} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            400,
            "image is neither base64 data nor a data: URL (file paths are never read from the server's disk)",
        ) from None
    if not raw:
        raise RequestError(400, "image payload is empty")
    return raw


def fetch_image_bytes(url: str, policy: ImagePolicy) -> bytes:
    """Download an http(s) image, reading at most `max_image_bytes` (413 beyond, 400 on failure)."""
    import httpx  # only servers started with --allow-remote-images need it

    try:
        with httpx.Client(timeout=policy.remote_timeout_s, follow_redirects=True, max_redirects=3) as client:
            with client.stream("GET", url, headers={"User-Agent": "llava-m3"}) as response:
                if response.status_code != 200:
                    raise RequestError(400, f"cannot download image {url}: HTTP {response.status_code}")
                if response.url.scheme not in ("http", "https"):
                    raise RequestError(400, f"cannot download image {url}: redirected to {response.url.scheme}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > policy.max_image_bytes:
                        raise RequestError(
                            413, f"image at {url} is larger than the limit of {policy.max_image_bytes} bytes"
                        )
                    chunks.append(chunk)
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise RequestError(400, f"cannot download image {url}: {e}") from e
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
