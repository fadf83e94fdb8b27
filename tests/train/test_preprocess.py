"""Prompt layout and labels for every conversation template: only the assistant turns are learned."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, SeparatorStyle
from llava.model.builder import load_tokenizer
from llava.testing import build_tiny_tokenizer
from llava.train.preprocess import ConversationTemplate, TemplateMismatchError, preprocess, render_conversation

TURNS = [
    {"from": "human", "value": "What is in the image?\n<image>"},
    {"from": "gpt", "value": "A red circle."},
    {"from": "human", "value": "how many?"},
    {"from": "gpt", "value": "two"},
]

# Llama-style sentencepiece tokenizers saved by transformers 4 (see tests/fixtures/make_tokenization_fixture.py).
SENTENCEPIECE_TOKENIZERS = Path(__file__).parents[1] / "fixtures" / "tokenization"

# What each template trains on: the answers plus the separator that ends them.
EXPECTED_TARGETS = {
    "v1": [" A red circle.</s>", " two</s>"],
    "llama_2": [" A red circle. </s>", " two </s>"],
    "mistral": [" A red circle. </s>", " two </s>"],
    "chatml": ["A red circle.<|im_end|>\n", "two<|im_end|>\n"],
    "qwen": ["A red circle.<|im_end|>\n", "two<|im_end|>\n"],
    "mpt": ["A red circle.<|im_end|>", "two<|im_end|>"],
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def labelled_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX])


@pytest.mark.parametrize("name", sorted(EXPECTED_TARGETS))
def test_labels_are_exactly_the_assistant_turns(tokenizer, name):
    template = ConversationTemplate.from_name(name)
    prompt = render_conversation(TURNS, template, num_images=1)
    assert [prompt.text[a:b] for a, b in prompt.target_spans] == EXPECTED_TARGETS[name]
    input_ids, labels = preprocess(TURNS, template, tokenizer, num_images=1)
    assert len(input_ids) == len(labels)
    assert input_ids.count(IMAGE_TOKEN_INDEX) == 1 and IMAGE_TOKEN_INDEX not in labels
    assert labelled_text(tokenizer, labels) == "".join(EXPECTED_TARGETS[name])
    # Labelled positions hold the input token itself (the model shifts), everything else is masked.
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(input_ids, labels))


@pytest.mark.parametrize("variant", ["legacy-true", "legacy-false"])
@pytest.mark.parametrize("name", ["v1", "llama_2", "mistral"])
def test_sentencepiece_labels_are_the_assistant_turns(name, variant):
    """Turns after "</s>" start with "▁USER" (legacy) or "USER": either way the answers are found exactly."""
    tokenizer = load_tokenizer(str(SENTENCEPIECE_TOKENIZERS / variant))
    input_ids, labels = preprocess(TURNS, ConversationTemplate.from_name(name), tokenizer, num_images=1)
    labelled = tokenizer.convert_ids_to_tokens([t for t in labels if t != IGNORE_INDEX])
    assert "".join(labelled) == "".join(EXPECTED_TARGETS[name]).replace(" ", "▁")
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(input_ids, labels))


def test_v1_prompt_matches_llava(tokenizer):
    """The image moves to the front of its turn, as LLaVA's preprocess_multimodal does."""
    prompt = render_conversation(TURNS[:2], ConversationTemplate.from_name("v1"), num_images=1).text
    assert prompt.endswith("USER: <image>\nWhat is in the image? ASSISTANT: A red circle.</s>")
    assert prompt.startswith("A chat between a curious user and an artificial intelligence assistant.")


def test_plain_is_image_then_caption(tokenizer):
    template = ConversationTemplate.from_name("plain")
    turns = [{"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": "a red circle"}]
    prompt = render_conversation(turns, template, num_images=1)
    assert prompt.text == "<image>a red circle\n"
    input_ids, labels = preprocess(turns, template, tokenizer, num_images=1)
    assert input_ids[:2] == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    assert labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
    assert labelled_text(tokenizer, labels) == "a red circle\n"


def test_im_start_end_wraps_the_image(tokenizer):
    template = ConversationTemplate.from_name("v1", mm_use_im_start_end=True)
    prompt = render_conversation(TURNS[:2], template, num_images=1).text
    assert "<im_start><image><im_end>\nWhat is in the image?" in prompt


def test_several_images_keep_their_places(tokenizer):
    turns = [{"from": "human", "value": "<image> left, <image> right: same?"}, {"from": "gpt", "value": "no"}]
    prompt = render_conversation(turns, ConversationTemplate.from_name("v1"), num_images=2).text
    assert "USER: <image> left, <image> right: same? ASSISTANT: no</s>" in prompt
    input_ids, _ = preprocess(turns, ConversationTemplate.from_name("v1"), tokenizer, num_images=2)
    assert input_ids.count(IMAGE_TOKEN_INDEX) == 2


def test_boundary_inside_a_token_is_an_error_naming_the_template(tokenizer):
    """A template whose assistant role runs into the answer ("ASSI" + "STANT" is one BPE word)."""
    conv = Conversation(
        system="", roles=("USER", "ASSI"), messages=(), offset=0, sep_style=SeparatorStyle.MPT, sep="", version="x"
    )
    template = ConversationTemplate("glued_roles", conv)
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "STANT"}]
    with pytest.raises(TemplateMismatchError, match="conversation template 'glued_roles'"):
        preprocess(turns, template, tokenizer, num_images=0)


def test_unknown_template_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown conversation template --version 'vicuna_v9'.*llama_2.*plain"):
        ConversationTemplate.from_name("vicuna_v9")
