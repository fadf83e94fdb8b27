"""The silent trap: vLLM's plain LLaVA would serve an M3 checkpoint at 576 tokens whatever the budget.

`assert_serves_budgets` is the check that catches it: it passes on the plugin and fails on the same
weights served by vLLM's own LLaVA, which ignores `matryoshka_vis_token_scale` without a word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from vllm_helpers import VLLM_MISSING, build_pad_checkpoint, chat_prompt, engine, greedy, noise_image, request

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow


def assert_serves_budgets(llm: Any) -> None:
    """The prompt shrinks by exactly 576 - s tokens at budget s, and an invalid budget is refused."""
    prompt, image = chat_prompt("What is in the image?"), noise_image(48, 48, seed=7)
    full = len(llm.generate(request(prompt, image, 576), greedy(1))[0].prompt_token_ids)
    for scale in (144, 9, 1):
        served = len(llm.generate(request(prompt, image, scale), greedy(1))[0].prompt_token_ids)
        assert full - served == 576 - scale, f"budget {scale} was served with {576 - (full - served)} visual tokens"
    with pytest.raises(Exception, match="valid values"):
        llm.generate(request(prompt, image, 10), greedy(1))


def test_plugin_serves_the_budget_and_plain_llava_does_not(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path
) -> None:
    from llava.vllm_plugin.plain_llava import save_plain_llava

    root = tmp_path_factory.mktemp("vllm-trap")
    checkpoint = build_pad_checkpoint(root, tiny_clip)
    with engine(checkpoint) as llm:
        assert_serves_budgets(llm)
    with engine(save_plain_llava(checkpoint, root / "plain-llava")) as llm:
        assert type(llm.llm_engine.model_config.hf_config).__name__ == "LlavaConfig"
        with pytest.raises(AssertionError, match="budget 144 was served with 576 visual tokens"):
            assert_serves_budgets(llm)
