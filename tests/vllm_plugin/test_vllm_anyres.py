"""The plugin on a LLaVA-NeXT-style (anyres, spatial_unpad) M3 checkpoint: same greedy tokens as our engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_helpers import (
    SCALES,
    VLLM_MISSING,
    Reference,
    assert_same_as_reference,
    build_anyres_checkpoint,
    chat_prompt,
    engine,
    noise_image,
)

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow

# A 2x1 grid with rows of padding cut, a 1x3 grid, and a square image on the 2x2 grid.
IMAGES = [noise_image(100, 40, seed=4), noise_image(30, 100, seed=5), noise_image(70, 70, seed=6)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Path:
    return build_anyres_checkpoint(tmp_path_factory.mktemp("vllm-anyres"), tiny_clip)


@pytest.fixture(scope="module")
def llm(checkpoint: Path) -> Iterator[Any]:
    with engine(checkpoint) as llm:
        yield llm


def test_every_budget_matches_our_engine(llm: Any, checkpoint: Path) -> None:
    """Fifteen requests (three image shapes × five budgets) batched together; crops differ per image."""
    reference = Reference(checkpoint)
    outputs = assert_same_as_reference(
        llm, reference, chat_prompt("Describe the picture."), [(i, s) for i in IMAGES for s in SCALES]
    )
    # The crop grids really differ: the same budget costs each image shape its own token count.
    counts = {len(out.prompt_token_ids) for out in outputs[: len(SCALES) * len(IMAGES) : len(SCALES)]}
    assert len(counts) == len(IMAGES)
