"""A model whose modules sit apart: under other device-map entries (offloaded to disk by accelerate, as
`device_map` does with layers that do not fit) or in other dtypes. Every tensor that crosses from one
module to the next must go where that module is, and the answers must not change."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.anyres import anyres_grid_shape
from llava.model.builder import load_pretrained_model
from llava.model.cpu_packing import prepare_for_inference

IMAGE_SIZE = (96, 60)
# The multimodal modules and the LM head offloaded (accelerate loads them for each call); the rest on the CPU.
OFFLOADED = {
    "model.embed_tokens": "cpu",
    "model.layers": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "model.image_newline": "cpu",
    "model.vision_tower": "disk",
    "model.mm_projector": "disk",
    "lm_head": "disk",
}


def inputs(tokenizer, model) -> dict:
    before = tokenizer("USER: ").input_ids
    after = tokenizer("\nWhat is in the image? ASSISTANT:", add_special_tokens=False).input_ids
    generator = torch.Generator().manual_seed(0)
    if model.config.is_anyres:
        cols, rows = anyres_grid_shape(IMAGE_SIZE, model.config.image_grid_pinpoints, 48)
        pixels = torch.randn(1, 1 + rows * cols, 3, 48, 48, generator=generator)
    else:
        pixels = torch.randn(1, 3, 48, 48, generator=generator)
    return dict(input_ids=torch.tensor([before + [IMAGE_TOKEN_INDEX] + after]), images=pixels, image_sizes=[IMAGE_SIZE])


def answers(tokenizer, model) -> list[tuple[torch.Tensor, list[int]]]:
    """Logits and 4 greedy tokens at 576 and 9 visual tokens."""
    batch = inputs(tokenizer, model)
    out = []
    with torch.inference_mode():
        for scale in (576, 9):
            logits = model(**batch, matryoshka_vis_token_scale=scale).logits
            ids = batch["input_ids"]
            rest = {k: v for k, v in batch.items() if k != "input_ids"}
            tokens = model.generate(
                ids, matryoshka_vis_token_scale=scale, max_new_tokens=4, min_new_tokens=4, do_sample=False, **rest
            )
            out.append((logits, tokens[0].tolist()))
    return out


@pytest.fixture(scope="module", params=["pad", "anyres"])
def checkpoint(request, tiny_llava_pad, tiny_llava_anyres):
    path = tiny_llava_pad if request.param == "pad" else tiny_llava_anyres
    tokenizer, model, _, _ = load_pretrained_model(str(path), None, "tiny", device="cpu")
    return path, tokenizer, answers(tokenizer, model)


def test_tower_and_projector_offloaded_to_disk_give_the_same_answers(checkpoint, tmp_path):
    path, tokenizer, expected = checkpoint
    _, model, _, _ = load_pretrained_model(
        str(path), None, "tiny", device="cpu", device_map=OFFLOADED, offload_folder=str(tmp_path / "offload")
    )
    assert model.model.mm_projector[0].weight.device.type == "meta"  # on disk until a call loads it
    assert model.get_vision_tower().clip.embeddings.patch_embedding.weight.device.type == "meta"
    for (logits, tokens), (want_logits, want_tokens) in zip(answers(tokenizer, model), expected):
        torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
        assert tokens == want_tokens
    # Packing needs every weight on the CPU: a split model is left as it is, and asking for it is an error.
    assert prepare_for_inference(model) == 0
    with pytest.raises(ValueError, match="split or offloaded by a device map"):
        prepare_for_inference(model, cpu_weight_prepack=True)


def test_tower_and_newline_in_another_dtype_give_the_same_answers(checkpoint):
    """float64 holds the float32 weights exactly, so only the arithmetic's rounding may differ."""
    path, tokenizer, expected = checkpoint
    _, model, _, _ = load_pretrained_model(str(path), None, "tiny", device="cpu")
    model.get_vision_tower().to(torch.float64)
    if model.model.image_newline is not None:
        model.model.image_newline.data = model.model.image_newline.data.double()
    assert model.model.mm_projector[0].weight.dtype == model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    for (logits, tokens), (want_logits, want_tokens) in zip(answers(tokenizer, model), expected):
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
        assert tokens == want_tokens


def test_projector_in_another_dtype_than_the_tower(checkpoint):
    """The tower's features are cast to the projector's dtype (here bfloat16 against a float32 tower)."""
    path, tokenizer, expected = checkpoint
    _, model, _, _ = load_pretrained_model(str(path), None, "tiny", device="cpu")
    model.model.mm_projector.to(torch.bfloat16)
    batch = inputs(tokenizer, model)
    with torch.inference_mode():
        encoded = model.encode_images(batch["images"])
        logits = model(**batch, matryoshka_vis_token_scale=576).logits
    assert encoded.features.dtype == torch.bfloat16
    # bfloat16 keeps 8 bits of mantissa: the answers are close, not equal.
    torch.testing.assert_close(logits, expected[0][0], rtol=0.05, atol=0.05)
