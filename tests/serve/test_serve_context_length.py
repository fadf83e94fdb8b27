"""The servers report the context length `load_pretrained_model` reads from the checkpoint
(`max_position_embeddings`), not a fixed 2048; the engine budgets `max_new_tokens` against it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_helpers import start_worker

from llava.serve.engine import InferenceEngine
from llava.serve.http import BackgroundServer
from llava.testing import build_tiny_llava

CONTEXT = 1024


@pytest.fixture(scope="module")
def short_context(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Path:
    return build_tiny_llava(
        tmp_path_factory.mktemp("ckpt") / "llava-short-context", vision_tower=tiny_clip, max_position_embeddings=CONTEXT
    )


@pytest.fixture(scope="module")
def worker(short_context: Path) -> Iterator[BackgroundServer]:
    server = start_worker(short_context)
    yield server
    server.stop()


def test_engine_takes_the_checkpoint_context_length(short_context: Path) -> None:
    engine = InferenceEngine.from_pretrained(str(short_context), device="cpu")
    assert engine.context_len == CONTEXT and engine.info()["context_length"] == CONTEXT


def test_openai_models_and_worker_status_report_the_checkpoint_context_length(worker: BackgroundServer) -> None:
    (card,) = httpx.get(f"{worker.url}/v1/models", timeout=30).json()["data"]
    assert card["matryoshka"]["context_length"] == CONTEXT
    status = httpx.post(f"{worker.url}/worker_get_status", timeout=30).json()
    assert status["matryoshka"]["context_length"] == CONTEXT
