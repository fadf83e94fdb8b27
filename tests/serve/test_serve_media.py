"""Image payloads: what a server decodes, what it refuses, and that it never reads its own disk."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from serve_helpers import serve_folder

from llava.serve.http import RequestError
from llava.serve.media import ImagePolicy, decode_image

POLICY = ImagePolicy(max_image_bytes=64 * 1024, max_image_pixels=512 * 512)


def png_bytes(size: tuple[int, int] = (30, 20), color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def refused(source: str, policy: ImagePolicy = POLICY) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_image(source, policy)
    return info.value


def test_base64_and_data_urls_decode_to_rgb() -> None:
    b64 = base64.b64encode(png_bytes()).decode()
    for source in (b64, f"data:image/png;base64,{b64}", f"data:;base64,{b64}", f"  {b64[:20]}\n{b64[20:]}  "):
        image = decode_image(source, POLICY)
        assert image.mode == "RGB" and image.size == (30, 20) and image.getpixel((0, 0)) == (10, 200, 30)


def test_file_paths_and_file_urls_are_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    for source in (str(secret), f"file://{secret}", f"file:{secret}", "/etc/passwd", "C:\\images\\a.png"):
        error = refused(source)
        assert error.status == 400
        assert "disk" in error.message


def test_unreadable_payloads_are_400_and_oversize_ones_413() -> None:
    not_image = base64.b64encode(b"<html>not an image</html>").decode()
    assert refused(not_image).status == 400
    assert "not a readable image" in refused(not_image).message
    assert refused("data:text/plain;base64,aGVsbG8=").status == 400
    assert refused("data:image/png,rawdata").status == 400
    assert refused("").status == 400
    truncated = base64.b64encode(png_bytes()[:40]).decode()
    assert refused(truncated).status == 400
    big = base64.b64encode(b"\0" * (80 * 1024)).decode()
    assert refused(big).status == 413
    too_many_pixels = base64.b64encode(png_bytes((1024, 1024))).decode()
    error = refused(too_many_pixels)
    assert error.status == 413 and "1024x1024" in error.message


@pytest.fixture()
def image_site(tmp_path: Path) -> Iterator[str]:
    """A local http server with one PNG and one large file, on 127.0.0.1."""
    (tmp_path / "cat.png").write_bytes(png_bytes((12, 12), (1, 2, 3)))
    (tmp_path / "huge.bin").write_bytes(b"\0" * (100 * 1024))
    with serve_folder(tmp_path) as url:
        yield url


def test_http_urls_are_fetched_only_when_allowed(image_site: str) -> None:
    url = f"{image_site}/cat.png"
    error = refused(url)
    assert error.status == 400 and "--allow-remote-images" in error.message
    allowed = ImagePolicy(max_image_bytes=64 * 1024, allow_remote=True, remote_timeout_s=5)
    assert decode_image(url, allowed).getpixel((0, 0)) == (1, 2, 3)
    assert refused(f"{image_site}/missing.png", allowed).status == 400
    assert refused(f"{image_site}/huge.bin", allowed).status == 413


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels but carries no pixel data: what a decompression bomb
    looks like to a server that trusts the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, before our 413
@pytest.mark.parametrize("side", [5000, 12_000, 100_000])
def test_a_huge_header_is_refused_before_any_pixel_is_decoded(side: int) -> None:
    """Below, between and beyond Pillow's own bomb thresholds: always a 413, never an allocation."""
    error = refused(base64.b64encode(png_header_only(side, side)).decode(), ImagePolicy())
    assert error.status == 413 and "pixels" in error.message
