"""On the CPU the plugin's projector runs oneDNN-packed weights, as vLLM's own linear layers do, and still
gives our engine's tokens.

vLLM packs its own layers (tower, language model) for oneDNN when it loads them; the projector is ours
(`build_vision_projector`), so the plugin packs it with `prepare_for_inference`, where packing pays
(`PACK_MIN_WEIGHTS`). This checkpoint's projector is wide enough for its second layer to qualify.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_helpers import (
    VLLM_MISSING,
    Reference,
    assert_same_as_reference,
    build_wide_projector_checkpoint,
    chat_prompt,
    engine,
    noise_image,
)

from llava.model.cpu_packing import PACK_MIN_WEIGHTS

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow


def test_projector_is_packed_and_tokens_match(tmp_path: Path, tiny_clip: Path) -> None:
    checkpoint = build_wide_projector_checkpoint(tmp_path, tiny_clip)
    assert 1024 * 1024 >= PACK_MIN_WEIGHTS
    with engine(checkpoint) as llm:
        layers = llm.apply_model(lambda model: [type(layer).__name__ for layer in model.mm_projector])[0]
        assert layers == ["Linear", "GELU", "PackedLinear"]
        assert_same_as_reference(
            llm,
            Reference(checkpoint),
            chat_prompt("Describe the picture."),
            [(noise_image(40, 30, seed=9), s) for s in (576, 9)],
        )
