"""Logit parity with Hugging Face transformers' own LLaVA and LLaVA-NeXT on the same weights."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.model.convert_hf import to_hf_llava

HF_IMAGE_TOKEN = 0  # <unk>: never produced by the text below, so it can stand for the image


def prompt_ids(tokenizer) -> tuple[list[int], list[int]]:
    before = tokenizer("USER: ").input_ids
    after = tokenizer("\nWhat is in the image? ASSISTANT:", add_special_tokens=False).input_ids
    return before, after


def test_pad_checkpoint_matches_transformers_llava(tiny_llava_pad):
    tokenizer, model, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "llava-v1.5-tiny-m3", device="cpu")
    hf = to_hf_llava(model, HF_IMAGE_TOKEN)
    assert type(hf).__name__ == "LlavaForConditionalGeneration"
    before, after = prompt_ids(tokenizer)
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, 48, 48)
    ours = model(
        input_ids=torch.tensor([before + [IMAGE_TOKEN_INDEX] + after]), images=pixels, matryoshka_vis_token_scale=576
    ).logits
    theirs = hf(input_ids=torch.tensor([before + [HF_IMAGE_TOKEN] * 576 + after]), pixel_values=pixels).logits
    assert ours.shape == theirs.shape == (1, len(before) + 576 + len(after), model.config.vocab_size)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("image_size", [(96, 48), (60, 100), (48, 48)])
def test_anyres_checkpoint_matches_transformers_llava_next(tiny_llava_anyres, image_size):
    tokenizer, model, _, _ = load_pretrained_model(str(tiny_llava_anyres), None, "llava-next-tiny", device="cpu")
    hf = to_hf_llava(model, HF_IMAGE_TOKEN)
    assert type(hf).__name__ == "LlavaNextForConditionalGeneration"
    from llava.model.anyres import anyres_grid_shape

    cols, rows = anyres_grid_shape(image_size, model.config.image_grid_pinpoints, 48)
    torch.manual_seed(1)
    pixels = torch.randn(1, 1 + rows * cols, 3, 48, 48)
    num_tokens = model.num_visual_tokens(576, image_size)
    before, after = prompt_ids(tokenizer)
    ours = model(
        input_ids=torch.tensor([before + [IMAGE_TOKEN_INDEX] + after]),
        images=pixels,
        image_sizes=[image_size],
        matryoshka_vis_token_scale=576,
    ).logits
    theirs = hf(
        input_ids=torch.tensor([before + [HF_IMAGE_TOKEN] * num_tokens + after]),
        pixel_values=pixels,
        image_sizes=torch.tensor([[image_size[1], image_size[0]]]),
    ).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
