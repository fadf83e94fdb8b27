"""The plugin on M3 checkpoints of the other language-model families our model has: Mistral and Qwen2.

Each runs its language model on vLLM's own text model of that family (`TEXT_ARCHITECTURES`), and must
give our engine's greedy tokens at every budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_helpers import (
    SCALES,
    VLLM_MISSING,
    VLLM_MODEL_FIELDS,
    Reference,
    assert_same_as_reference,
    chat_prompt,
    engine,
    noise_image,
)

from llava.testing import build_tiny_llava

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model_type", ["llava_mistral", "llava_qwen2"])
def test_family_matches_our_engine_at_every_budget(tmp_path: Path, tiny_clip: Path, model_type: str) -> None:
    checkpoint = build_tiny_llava(
        tmp_path / f"llava-v1.5-tiny-{model_type}-m3",
        vision_tower=tiny_clip,
        model_type=model_type,
        matryoshka_vis_token_scale=SCALES,
        **VLLM_MODEL_FIELDS,
    )
    reference = Reference(checkpoint)
    with engine(checkpoint) as llm:
        assert llm.llm_engine.model_config.architectures == reference.model.config.architectures
        assert_same_as_reference(
            llm,
            reference,
            chat_prompt("Describe the picture."),
            [(noise_image(64, 48, seed=13), s) for s in SCALES],
        )
