"""The plugin on a LLaVA-1.5-style (pad) M3 checkpoint: same greedy tokens as our engine at every budget."""

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
    build_pad_checkpoint,
    chat_prompt,
    engine,
    greedy,
    noise_image,
    request,
)

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow

QUESTION = "What is in the image? Describe the picture."
# Wide and tall: pad-to-square changes the pixels, so a resize-and-crop preprocessing would show.
IMAGES = [noise_image(80, 40, seed=1), noise_image(30, 60, seed=2)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Path:
    return build_pad_checkpoint(tmp_path_factory.mktemp("vllm-pad"), tiny_clip)


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Reference:
    return Reference(checkpoint)


@pytest.fixture(scope="module")
def llm(checkpoint: Path) -> Iterator[Any]:
    with engine(checkpoint, enable_prefix_caching=True) as llm:
        yield llm


def test_mixed_budget_batch_matches_our_engine(llm: Any, reference: Reference) -> None:
    """Ten requests, two images × five budgets, in one batch: each gives our engine's tokens for its budget."""
    assert_same_as_reference(llm, reference, chat_prompt(QUESTION), [(i, s) for i in IMAGES for s in SCALES])


def test_one_at_a_time_equals_batched(llm: Any) -> None:
    prompt = chat_prompt(QUESTION)
    cases = [(IMAGES[0], 9), (IMAGES[0], 576), (IMAGES[1], 1)]
    batched = llm.generate([request(prompt, image, scale) for image, scale in cases], greedy())
    for (image, scale), together in zip(cases, batched):
        alone = llm.generate(request(prompt, image, scale), greedy())[0]
        assert list(alone.outputs[0].token_ids) == list(together.outputs[0].token_ids)


def test_prefix_cache_never_mixes_budgets(llm: Any, reference: Reference) -> None:
    """The same image and prompt at 576, 9, then 576 again: each budget gets its own answer.

    The repeat at 576 reuses cached blocks (the cache is on); the request at 9 may reuse only the text
    before the image, never the 576-token image blocks.
    """
    prompt = chat_prompt("How many shapes are there?")
    image = noise_image(64, 64, seed=3)
    first = llm.generate(request(prompt, image, 576), greedy())[0]
    small = llm.generate(request(prompt, image, 9), greedy())[0]
    again = llm.generate(request(prompt, image, 576), greedy())[0]
    assert list(first.outputs[0].token_ids) == reference.generate(prompt, image, 576)
    assert list(small.outputs[0].token_ids) == reference.generate(prompt, image, 9)
    assert list(again.outputs[0].token_ids) == list(first.outputs[0].token_ids)
    text_before_image = reference.prompt_ids(prompt).index(-200)
    assert again.num_cached_tokens > text_before_image
    assert small.num_cached_tokens <= text_before_image


def test_no_budget_means_the_checkpoint_default(llm: Any, reference: Reference) -> None:
    prompt = chat_prompt(QUESTION)
    out = llm.generate(request(prompt, IMAGES[0], None), greedy())[0]
    default = reference.model.default_scale
    assert default == 576
    assert len(out.prompt_token_ids) == len(reference.prompt_ids(prompt)) - 1 + default
    assert list(out.outputs[0].token_ids) == reference.generate(prompt, IMAGES[0], default)


@pytest.mark.parametrize("bad", [10, 0, "nine", 577])
def test_invalid_budget_is_refused_with_the_valid_values(llm: Any, bad: object) -> None:
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match=r"valid values.*\[1, 4, 9, 16, 36, 64, 144, 576\]"):
        llm.generate(request(chat_prompt(QUESTION), IMAGES[0], bad), greedy())
    # The engine goes on serving.
    assert llm.generate(request(chat_prompt(QUESTION), IMAGES[0], 9), greedy())[0].outputs[0].token_ids


def test_unknown_processor_argument_is_refused(llm: Any) -> None:
    from vllm.exceptions import VLLMValidationError

    item = request(chat_prompt(QUESTION), IMAGES[0], 9)
    item["mm_processor_kwargs"]["matryoshka_vis_token_scales"] = 9
    with pytest.raises(VLLMValidationError, match="the only one is 'matryoshka_vis_token_scale'"):
        llm.generate(item, greedy())
