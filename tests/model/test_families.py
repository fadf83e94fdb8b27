"""Every language-model family (Llama, Mistral, Qwen2): build, save/load round trip, generate at two budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import LLAVA_MODEL_CLASSES
from llava.model.builder import load_pretrained_model
from llava.testing import MODEL_TYPES, build_tiny_llava

PIXELS = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
LANGUAGE_MODELS = {
    "llava_llama": "LlamaForCausalLM",
    "llava_mistral": "MistralForCausalLM",
    "llava_qwen2": "Qwen2ForCausalLM",
}


def prompt(tokenizer) -> torch.Tensor:
    before = tokenizer("USER: ").input_ids
    after = tokenizer("\nWhat is in the image? ASSISTANT:", add_special_tokens=False).input_ids
    return torch.tensor([before + [IMAGE_TOKEN_INDEX] + after])


def answer(tokenizer, model, scale: int) -> tuple[torch.Tensor, list[int]]:
    """Logits of the prompt and 6 greedy tokens, at `scale`."""
    ids = prompt(tokenizer)
    with torch.inference_mode():
        logits = model(input_ids=ids, images=PIXELS, matryoshka_vis_token_scale=scale).logits
        tokens = model.generate(
            ids, images=PIXELS, matryoshka_vis_token_scale=scale, max_new_tokens=6, min_new_tokens=6, do_sample=False
        )
    return logits, tokens[0].tolist()


@pytest.fixture(scope="module", params=MODEL_TYPES)
def family(request, tmp_path_factory, tiny_clip) -> tuple[str, Path]:
    model_type = request.param
    path = build_tiny_llava(
        tmp_path_factory.mktemp(model_type) / f"{model_type}-tiny-m3",
        vision_tower=tiny_clip,
        model_type=model_type,
        matryoshka_vis_token_scale=[576, 144, 36, 9, 1],
    )
    return model_type, path


def test_each_family_builds_its_own_classes_in_the_released_format(family):
    model_type, path = family
    config = json.loads((path / "config.json").read_text())
    config_cls, model_cls = LLAVA_MODEL_CLASSES[model_type]
    assert config["model_type"] == model_type and config["architectures"] == [model_cls.__name__]
    _, model, image_processor, context = load_pretrained_model(str(path), None, path.name, device="cpu")
    assert type(model) is model_cls and isinstance(model.config, config_cls)
    assert LANGUAGE_MODELS[model_type] in [base.__name__ for base in type(model).__mro__]
    assert model.grid_side == 24 and image_processor is not None and context == 2048
    assert model.model.mm_projector is not None and model.get_vision_tower() is not None


def test_each_family_survives_a_save_and_load_round_trip(family, tmp_path):
    model_type, path = family
    tokenizer, model, image_processor, _ = load_pretrained_model(str(path), None, path.name, device="cpu")
    copy = tmp_path / "copy"
    model.save_pretrained(copy)
    tokenizer.save_pretrained(copy)
    image_processor.save_pretrained(copy)
    tokenizer2, reloaded, _, _ = load_pretrained_model(str(copy), None, "copy", device="cpu")
    assert type(reloaded) is type(model) and reloaded.config.model_type == model_type
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    for scale in (576, 9):
        logits, tokens = answer(tokenizer, model, scale)
        logits2, tokens2 = answer(tokenizer2, reloaded, scale)
        torch.testing.assert_close(logits2, logits, rtol=0, atol=0)
        assert tokens2 == tokens


def test_each_family_generates_at_two_budgets_with_the_budget_in_the_prompt(family):
    _, path = family
    tokenizer, model, _, _ = load_pretrained_model(str(path), None, path.name, device="cpu")
    prompt_length = prompt(tokenizer).shape[1] - 1
    for scale in (576, 9):
        logits, tokens = answer(tokenizer, model, scale)
        assert logits.shape[1] == prompt_length + scale  # the image costs exactly `scale` tokens
        assert len(tokens) == 6 and all(0 <= t < model.config.vocab_size for t in tokens)
        assert torch.isfinite(logits).all()
