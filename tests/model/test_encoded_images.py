"""`EncodedImages.select`: several prompts about one image share one encoding."""

from __future__ import annotations

import pytest
import torch

from llava.model.llava_arch import EncodedImages


def _encoded() -> EncodedImages:
    # Three images of 1, 3 and 2 crops; each crop's features hold its image number.
    features = torch.cat([torch.full((n, 4, 2), float(i)) for i, n in enumerate([1, 3, 2])])
    return EncodedImages(features, [1, 3, 2], stacked_crops=True)


def test_select_gathers_whole_images_in_the_given_order_with_repeats() -> None:
    picked = _encoded().select([2, 0, 2])
    assert picked.crops_per_image == [2, 1, 2]
    assert picked.stacked_crops
    assert [int(image[0, 0, 0]) for image in picked.per_image()] == [2, 0, 2]
    assert picked.features.shape == (5, 4, 2)


def test_select_nothing_and_out_of_range() -> None:
    assert _encoded().select([]).features.shape == (0, 4, 2)
    with pytest.raises(IndexError, match=r"image indices \[3\] out of range for 3 encoded images"):
        _encoded().select([0, 3])


def test_selected_encoding_gives_the_same_logits_as_pixels(tiny_llava_pad) -> None:
    from llava.model.builder import load_pretrained_model

    tokenizer, model, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "llava-v1.5", device="cpu")
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([tokenizer("USER:").input_ids + [-200] + tokenizer(" hi", add_special_tokens=False).input_ids])
    with torch.no_grad():
        encoded = model.encode_images(pixels)
        direct = model(input_ids=ids, images=pixels[1:], matryoshka_vis_token_scale=36).logits
        shared = model(input_ids=ids, images=encoded.select([1]), matryoshka_vis_token_scale=36).logits
    torch.testing.assert_close(shared, direct)
