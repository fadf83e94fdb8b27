"""Under the plugin, vLLM's prompt ids are the original M3 code's, where vLLM's own tokenizer gives others.

A tiny checkpoint carries the sentencepiece tokenizer of tests/fixtures/tokenization, once per
`tokenizer_config.json` variant (`legacy` true, false, absent), and the prompts go to vLLM as text.
vLLM tokenizes them with transformers 5; the plugin must turn that into the ids the fixture recorded
from the original code on transformers 4 (`load_tokenizer` + `tokenizer_image_token`), the
placeholder repeated once per visual token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm_helpers import VLLM_MISSING, build_checkpoint_with_tokenizer, engine, greedy, noise_image

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import tokenizer_image_token
from llava.model.tokenizer import load_tokenizer

pytest.importorskip("vllm", reason=VLLM_MISSING)
pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tokenization"
ORIGINAL = json.loads((FIXTURES / "original_ids.json").read_text(encoding="utf-8"))
IMAGE_CASES = [case for case in ORIGINAL["prompts"] if DEFAULT_IMAGE_TOKEN in case["prompt"]]
SCALE = 1  # one placeholder per image keeps the prompts short; the count at every budget is tested elsewhere
# A space at the very start or right after a special token: where transformers 5 may encode the text with
# and without it alike (the test checks that it does wherever the ids differ from the original's).
SPACE_VLLM_MAY_LOSE = re.compile(r"^ |(?<=</s>) |(?<=<s>) ")


@pytest.fixture(scope="module", params=sorted(ORIGINAL["header"]["variants"]))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def llm(variant: str, tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Iterator[Any]:
    root = tmp_path_factory.mktemp(f"vllm-tok-{variant}")
    checkpoint = build_checkpoint_with_tokenizer(root / "llava-v1.5-tiny-sp-m3", tiny_clip, FIXTURES / variant)
    with engine(checkpoint) as llm:
        yield llm


@pytest.fixture(scope="module")
def ours(variant: str) -> Any:
    return load_tokenizer(str(FIXTURES / variant))


@pytest.fixture(scope="module")
def placeholder(ours: Any) -> int:
    from llava.vllm_plugin.processor import image_placeholder_id

    return image_placeholder_id(ours)


def served_ids(llm: Any, prompts: list[str]) -> list[list[int]]:
    requests = [
        {
            "prompt": prompt,
            "multi_modal_data": {
                "image": [noise_image(32, 24, seed=i) for i in range(prompt.count(DEFAULT_IMAGE_TOKEN))]
            },
            "mm_processor_kwargs": {"matryoshka_vis_token_scale": SCALE},
        }
        for prompt in prompts
    ]
    return [out.prompt_token_ids for out in llm.generate(requests, greedy(1))]


def with_placeholder(ids: list[int], placeholder: int) -> list[int]:
    return [placeholder if token == IMAGE_TOKEN_INDEX else token for token in ids]


def test_every_fixture_prompt_gets_the_original_ids(llm: Any, ours: Any, placeholder: int, variant: str) -> None:
    """98 prompts of every template, 1 to 3 images each; the only exceptions are texts vLLM cannot tell apart.

    Where the ids differ from the original's, the prompt must be one whose space at the start or after a
    special token vLLM's tokenizer drops (the same ids with and without it): the plugin then gives the
    original ids of the text without that space, as every conversation template writes it.
    """
    vllm_tokenizer = llm.get_tokenizer()
    prompts = [case["prompt"] for case in IMAGE_CASES]
    lost = []
    for case, served in zip(IMAGE_CASES, served_ids(llm, prompts)):
        if served == with_placeholder(case["input_ids"][variant], placeholder):
            continue
        unspaced = SPACE_VLLM_MAY_LOSE.sub("", case["prompt"])
        assert vllm_tokenizer.encode(unspaced) == vllm_tokenizer.encode(case["prompt"]), case["prompt"]
        assert served == tokenizer_image_token(unspaced, ours, image_token_index=placeholder), case["prompt"]
        lost.append(case["prompt"])
    # A space vLLM's tokenizer drops: at the start of a prompt in every variant, and right after a special
    # token as well where the config says `legacy: true`.
    if variant != "legacy-true":
        assert lost == [prompt for prompt in prompts if prompt.startswith(" ")]


def test_where_transformers_5_differs(llm: Any, ours: Any, placeholder: int, variant: str) -> None:
    """The turn after `</s>` in a 2-turn v1 prompt, and text right after `<image>`: ours, not vLLM's tokenizer's."""
    conv = get_conv_template("v1")
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\nWhat is shown in this picture?")
    conv.append_message(conv.roles[1], "A red circle.")
    conv.append_message(conv.roles[0], "And what colour is the square?")
    conv.append_message(conv.roles[1], None)
    two_turns = conv.get_prompt()
    image_then_text = f"USER: {DEFAULT_IMAGE_TOKEN} Describe the image. ASSISTANT:"
    prompts = [two_turns, image_then_text]
    original = [tokenizer_image_token(prompt, ours, image_token_index=placeholder) for prompt in prompts]
    assert served_ids(llm, prompts) == original
    # vLLM's tokenizer alone gives other ids: after `</s>` where the config has no `legacy` key (transformers
    # 4 read it as True, transformers 5 as False), and after `<image>` in every variant.
    vllm_alone = [
        tokenizer_image_token(prompt, llm.get_tokenizer(), image_token_index=placeholder) for prompt in prompts
    ]
    assert (vllm_alone[0] != original[0]) == (variant == "legacy-absent")
    assert vllm_alone[1] != original[1]
