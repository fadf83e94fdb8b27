"""Image payloads of a request → RGB PIL images, refusing anything the server should not read.

A request carries each image as base64 data (the worker protocol), a `data:` URL (the OpenAI format)
or, only when the operator allowed it, an http(s) URL. A file path or a `file://` URL is refused
without touching the disk: a server must never be talked into reading its own files.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import warnings
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, UnidentifiedImageError

from llava.serve.errors import RequestError

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
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


def decode_image(source: str, policy: ImagePolicy) -> Image.Image:
    """One image payload → an RGB image; raises `RequestError` (400 or 413) for anything else."""
    if not isinstance(source, str):
        raise RequestError(400, f"an image must be given as a string (base64 or URL), got {type(source).__name__}")
    source = source.strip()
    scheme_match = _SCHEME.match(source)
    scheme = scheme_match.group(1).lower() if scheme_match else None
    if scheme == "data":
        return open_image(_data_url_bytes(source, policy), policy)
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise RequestError(
                400,
                "remote image URLs are not accepted by this server (start it with --allow-remote-images); "
                "send the image inline as a base64 data: URL",
            )
        return open_image(fetch_image_bytes(source, policy), policy)
    if scheme is not None and len(scheme) > 1:  # one letter is a Windows drive, refused below as non-base64
        raise RequestError(
            400,
            f"image URLs with the scheme {scheme!r} are not accepted: the server never reads its own disk or "
            "other local resources; send the image inline as base64 or a data: URL",
        )
    return open_image(b64decode_image(source, policy), policy)


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
    except httpx.HTTPError as e:
        raise RequestError(400, f"cannot download image {url}: {e}") from e
    return b"".join(chunks)


def open_image(raw: bytes, policy: ImagePolicy) -> Image.Image:
    """Decode image bytes to RGB, checking the pixel count before the pixels are decompressed."""
    if len(raw) > policy.max_image_bytes:
        raise RequestError(413, f"image is larger than the limit of {policy.max_image_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(raw)) as image:
                width, height = image.size
                if width * height > policy.max_image_pixels:
                    raise RequestError(
                        413, f"image of {width}x{height} pixels is over the limit of {policy.max_image_pixels} pixels"
                    )
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(413, f"image is over the limit of {policy.max_image_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise RequestError(400, f"payload is not a readable image: {e}") from None


def encode_image_b64(image: Image.Image, image_format: str = "PNG") -> str:
    """A PIL image as base64 text, the form the worker protocol carries."""
    buffer = BytesIO()
    image.save(buffer, format=image_format)
    return base64.b64encode(buffer.getvalue()).decode()
