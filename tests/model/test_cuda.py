"""CUDA-only checks (skipped without a GPU): half-precision loading, parity and batching on device."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.model.convert_hf import to_hf_llava

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def prompt(tokenizer) -> list[int]:
    return (
        tokenizer("USER: ").input_ids
        + [IMAGE_TOKEN_INDEX]
        + tokenizer("\nWhat is it? ASSISTANT:", add_special_tokens=False).input_ids
    )


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_loads_on_cuda_in_half_precision_and_generates_at_every_scale(tiny_llava_pad, dtype):
    kwargs = {} if dtype is None else {"dtype": dtype}
    tokenizer, model, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cuda", **kwargs)
    assert model.device.type == "cuda"
    assert model.dtype == (dtype or torch.float16)
    ids = torch.tensor([prompt(tokenizer)], device="cuda")
    pixels = torch.randn(1, 3, 48, 48, device="cuda", dtype=model.dtype)
    for scale in (576, 144, 36, 9, 1):
        out = model.generate(ids, images=pixels, matryoshka_vis_token_scale=scale, max_new_tokens=4, min_new_tokens=4)
        assert out.shape == (1, 4)
        logits = model(input_ids=ids, images=pixels, matryoshka_vis_token_scale=scale).logits
        assert torch.isfinite(logits).all() and logits.shape[1] == ids.shape[1] - 1 + scale


def test_parity_with_transformers_on_cuda(tiny_llava_pad):
    torch.backends.cuda.matmul.allow_tf32 = False
    tokenizer, model, _, _ = load_pretrained_model(
        str(tiny_llava_pad), None, "tiny", device="cuda", dtype=torch.float32
    )
    hf = to_hf_llava(model, image_token_index=0)
    ids = prompt(tokenizer)
    pos = ids.index(IMAGE_TOKEN_INDEX)
    pixels = torch.randn(1, 3, 48, 48, device="cuda")
    ours = model(input_ids=torch.tensor([ids], device="cuda"), images=pixels, matryoshka_vis_token_scale=576).logits
    hf_ids = torch.tensor([ids[:pos] + [0] * 576 + ids[pos + 1 :]], device="cuda")
    theirs = hf(input_ids=hf_ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_mixed_scale_batch_on_cuda_matches_samples_alone(tiny_llava_pad):
    tokenizer, model, _, _ = load_pretrained_model(
        str(tiny_llava_pad), None, "tiny", device="cuda", dtype=torch.float32
    )
    ids = prompt(tokenizer)
    batch = torch.tensor([ids, ids], device="cuda")
    pixels = torch.randn(2, 3, 48, 48, device="cuda")
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    both = model.generate(batch, images=pixels, matryoshka_vis_token_scale=[9, 144], **kwargs)
    for i, scale in enumerate((9, 144)):
        alone = model.generate(batch[i : i + 1], images=pixels[i : i + 1], matryoshka_vis_token_scale=scale, **kwargs)
        assert both[i].tolist() == alone[0].tolist()


def test_device_map_auto_answers_as_on_the_cpu(tiny_llava_pad):
    tokenizer, on_cpu, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu")
    _, on_gpu, _, _ = load_pretrained_model(
        str(tiny_llava_pad), None, "tiny", device="cuda", device_map="auto", dtype=torch.float32
    )
    assert on_gpu.model.mm_projector[0].weight.device.type == "cuda"
    ids, pixels = torch.tensor([prompt(tokenizer)]), torch.randn(1, 3, 48, 48)
    for scale in (576, 9):
        expected = on_cpu(input_ids=ids, images=pixels, matryoshka_vis_token_scale=scale).logits
        got = on_gpu(input_ids=ids.cuda(), images=pixels.cuda(), matryoshka_vis_token_scale=scale).logits
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_llava_pad", "tiny_llava_anyres"])
def test_tower_and_projector_on_another_device_than_the_language_model(fixture, request):
    """Pixels, features and image_newline each go where the module that uses them is."""
    path = request.getfixturevalue(fixture)
    tokenizer, model, _, _ = load_pretrained_model(str(path), None, "tiny", device="cuda", dtype=torch.float32)
    ids = torch.tensor([prompt(tokenizer)], device="cuda")
    crops = 5 if model.config.is_anyres else 1  # a square 96 px image on the 2x2 grid, plus the base image
    pixels = torch.randn(1, crops, 3, 48, 48, device="cuda") if model.config.is_anyres else torch.randn(1, 3, 48, 48)
    kwargs = dict(images=pixels.cuda(), image_sizes=[(96, 96)], matryoshka_vis_token_scale=36)
    expected = model(input_ids=ids, **kwargs).logits
    model.get_vision_tower().to("cpu")
    model.model.mm_projector.to("cpu")
    got = model(input_ids=ids, **kwargs).logits
    assert got.device.type == "cuda"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
