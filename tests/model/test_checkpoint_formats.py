"""The other formats a LLaVA checkpoint comes in: the original LLaVA code's (`model_type: "llava"`, as
liuhaotian/llava-v1.5-7b ships) and transformers' own LLaVA / LLaVA-NeXT (llava-hf). Each loads into
our classes, answers exactly like the M3 checkpoint it was written from, at any budget, and saves as ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import LlavaLlamaForCausalLM, LlavaMistralForCausalLM
from llava.model.anyres import anyres_grid_shape
from llava.model.builder import load_pretrained_model, read_checkpoint_config
from llava.testing import build_tiny_llava, save_as_hf_llava, save_as_original_llava

IMAGE_SIZE = (96, 60)  # (width, height): a wide image, so anyres crops, unpads and adds newlines


def prompt(tokenizer) -> torch.Tensor:
    before = tokenizer("USER: ").input_ids
    after = tokenizer("\nWhat is in the image? ASSISTANT:", add_special_tokens=False).input_ids
    return torch.tensor([before + [IMAGE_TOKEN_INDEX] + after])


def pixels_for(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if not model.config.is_anyres:
        return torch.randn(1, 3, 48, 48, generator=generator)
    cols, rows = anyres_grid_shape(IMAGE_SIZE, model.config.image_grid_pinpoints, 48)
    return torch.randn(1, 1 + rows * cols, 3, 48, 48, generator=generator)


def answers(tokenizer, model, scales=(576, 9)) -> dict[int, tuple[torch.Tensor, list[int]]]:
    """Per budget: the prompt's logits and 5 greedy tokens."""
    ids, pixels = prompt(tokenizer), pixels_for(model)
    out = {}
    with torch.inference_mode():
        for scale in scales:
            kwargs = dict(images=pixels, image_sizes=[IMAGE_SIZE], matryoshka_vis_token_scale=scale)
            logits = model(input_ids=ids, **kwargs).logits
            tokens = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, **kwargs)
            out[scale] = (logits, tokens[0].tolist())
    return out


def assert_same_answers(got: dict, expected: dict) -> None:
    for scale, (logits, tokens) in expected.items():
        torch.testing.assert_close(got[scale][0], logits, rtol=0, atol=0, msg=f"logits at {scale}")
        assert got[scale][1] == tokens, scale


@pytest.fixture(scope="module", params=["pad", "anyres"])
def m3_checkpoint(request, tiny_llava_pad, tiny_llava_anyres) -> Path:
    return tiny_llava_pad if request.param == "pad" else tiny_llava_anyres


@pytest.fixture(scope="module")
def m3_loaded(m3_checkpoint):
    tokenizer, model, image_processor, _ = load_pretrained_model(str(m3_checkpoint), None, "m3", device="cpu")
    return tokenizer, model, image_processor, answers(tokenizer, model)


# -- the original LLaVA code's format --------------------------------------------------------------


def test_original_llava_checkpoint_loads_and_answers_exactly_like_the_m3_one(m3_checkpoint, m3_loaded, tmp_path):
    original = save_as_original_llava(m3_checkpoint, tmp_path / "llava-v1.5-7b")
    assert json.loads((original / "config.json").read_text())["model_type"] == "llava"
    assert not any(".vision_tower." in k for k in load_file(original / "model.safetensors"))
    assert read_checkpoint_config(original).format == "llava"
    tokenizer, model, image_processor, context = load_pretrained_model(
        str(original), None, "llava-v1.5-7b", device="cpu"
    )
    assert type(model) is LlavaLlamaForCausalLM and model.config.model_type == "llava_llama"
    assert image_processor is not None and context == 2048
    assert_same_answers(answers(tokenizer, model), m3_loaded[3])


def test_original_llava_checkpoint_saves_back_as_llava_llama(tiny_llava_pad, tmp_path):
    original = save_as_original_llava(tiny_llava_pad, tmp_path / "llava-v1.5-7b")
    tokenizer, model, image_processor, _ = load_pretrained_model(str(original), None, "llava-v1.5-7b", device="cpu")
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "llava_llama" and config["architectures"] == ["LlavaLlamaForCausalLM"]
    assert read_checkpoint_config(tmp_path / "saved").format == "m3"


def test_original_llava_checkpoint_of_another_family_is_told_by_its_architectures(tiny_clip, tmp_path):
    mistral = build_tiny_llava(tmp_path / "llava-v1.6-mistral-tiny", vision_tower=tiny_clip, model_type="llava_mistral")
    original = save_as_original_llava(mistral, tmp_path / "original-mistral")
    _, model, _, _ = load_pretrained_model(str(original), None, "original-mistral", device="cpu")
    assert type(model) is LlavaMistralForCausalLM


def test_the_folder_name_does_not_decide_the_format(tiny_llava_pad, tmp_path):
    """An original-format checkpoint in a folder named like llava-hf, and an llava-hf one named like M3."""
    tokenizer, model, image_processor, _ = load_pretrained_model(str(tiny_llava_pad), None, "m3", device="cpu")
    original = save_as_original_llava(tiny_llava_pad, tmp_path / "llava-1.5-7b-hf")
    hf = save_as_hf_llava(model, tokenizer, image_processor, tmp_path / "llava-v1.5-7b-m3")
    assert read_checkpoint_config(original).format == "llava"
    assert read_checkpoint_config(hf).format == "llava-hf"


# -- transformers' LLaVA / LLaVA-NeXT (llava-hf) ---------------------------------------------------


@pytest.mark.parametrize("hub_layout", [False, True])
def test_llava_hf_checkpoint_loads_and_answers_like_the_m3_model_at_two_budgets(m3_loaded, tmp_path, hub_layout):
    tokenizer, m3_model, image_processor, expected = m3_loaded
    hf = save_as_hf_llava(m3_model, tokenizer, image_processor, tmp_path / "llava-hf", hub_layout=hub_layout)
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == ("llava_next" if m3_model.config.is_anyres else "llava") and "text_config" in config
    hf_tokenizer, model, hf_processor, context = load_pretrained_model(str(hf), None, "llava-hf", device="cpu")
    assert type(model) is LlavaLlamaForCausalLM
    assert model.config.image_aspect_ratio == m3_model.config.image_aspect_ratio
    assert model.config.image_grid_pinpoints == m3_model.config.image_grid_pinpoints
    assert hf_processor.crop_size == image_processor.crop_size and context == 2048
    state, reference = model.state_dict(), m3_model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert_same_answers(answers(hf_tokenizer, model), expected)
