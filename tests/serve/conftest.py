"""Fixtures for the serving tests (helpers live in serve_helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import start_worker

from llava.serve.http import BackgroundServer

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="module")
def worker(tiny_llava_pad: Path) -> Iterator[BackgroundServer]:
    """A stand-alone worker (no controller) with small limits so the 413 paths are cheap to reach."""
    server = start_worker(
        tiny_llava_pad,
        extra=[
            "--max-request-bytes",
            str(256 * 1024),
            "--max-image-bytes",
            str(64 * 1024),
            "--max-image-pixels",
            str(512 * 512),
            "--limit-model-concurrency",
            "16",
        ],
    )
    yield server
    server.stop()
