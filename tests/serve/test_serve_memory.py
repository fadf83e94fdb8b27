"""The memory one request's images can cost a server under the default limits, measured in a real worker process.

The worst image is the largest the limits let through: 4096x4096 pixels (--max-image-pixels), as RGBA
(4 bytes a pixel before conversion), which needs no padding; a request carries at most 8 of them
(--max-images). A 16384x1024 image within the pixel limit, which padding to a square would make
16384² (4 GB to process), must be refused without costing anything. The bounds are stated in docs/Serving.md.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serve_helpers import spawn_worker

MIB = 1024 * 1024
ONE_IMAGE_BOUND = 400 * MIB
FULL_REQUEST_BOUND = 1024 * MIB
REFUSED_BOUND = 32 * MIB


def png_b64(size: tuple[int, int], mode: str = "RGBA") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, (40, 90, 160, 200)[: len(mode)]).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> int:
    """Start counting the peak anew from the current resident memory; returns that starting point."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as e:
        pytest.skip(f"cannot reset the peak RSS of a process here: {e}")
    return peak_rss(pid)


def ask(url: str, images: list[str]) -> httpx.Response:
    prompt = "USER: " + "<image>" * len(images) + "\nWhat is it? ASSISTANT:"
    body = {"prompt": prompt, "images": images, "max_new_tokens": 1, "matryoshka_vis_token_scale": 1}
    return httpx.post(f"{url}/worker_generate_stream", json=body, timeout=600)


@pytest.mark.slow
def test_peak_memory_of_the_largest_images_a_request_may_carry(tiny_llava_pad: Path, tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc (Linux)")
    process, url = spawn_worker(tiny_llava_pad, tmp_path / "worker.log")  # the default limits
    try:
        assert ask(url, [png_b64((64, 64))]).status_code == 200  # warm: first-call allocations are not the image's

        idle = reset_peak_rss(process.pid)  # every growth below is counted from here
        refused = ask(url, [png_b64((16384, 1024), "RGB")])
        assert refused.status_code == 413 and "16384x16384" in refused.json()["text"]
        assert peak_rss(process.pid) - idle < REFUSED_BOUND

        worst = png_b64((4096, 4096))
        assert ask(url, [worst]).status_code == 200
        one_image = peak_rss(process.pid) - idle
        assert one_image < ONE_IMAGE_BOUND, f"one 4096² image raised the peak RSS by {one_image / MIB:.0f} MiB"

        assert ask(url, [worst] * 8).status_code == 200
        full = peak_rss(process.pid) - idle
        assert full < FULL_REQUEST_BOUND, f"8 images of 4096² raised the peak RSS by {full / MIB:.0f} MiB"
    finally:
        process.kill()
        process.wait(timeout=30)
