"""`load_pretrained_model` on every checkpoint layout LLaVA/M3 users have."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model import LlavaLlamaForCausalLM
from llava.model.builder import load_pretrained_model
from llava.testing import build_tiny_llava

PIXELS = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))


def logits_of(tokenizer, model, scale: int = 36) -> torch.Tensor:
    ids = (
        tokenizer("USER: ").input_ids
        + [IMAGE_TOKEN_INDEX]
        + tokenizer(" Hi ASSISTANT:", add_special_tokens=False).input_ids
    )
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), images=PIXELS, matryoshka_vis_token_scale=scale).logits.float()


def save_language_part_as_plain_llama(model: LlavaLlamaForCausalLM, tokenizer, out: Path) -> Path:
    """Write the checkpoint's language model alone, as a base LLM like vicuna-7b-v1.5 would be."""
    fields = {k: v for k, v in model.config.to_dict().items() if not k.startswith(("mm_", "matryoshka", "image_"))}
    fields.pop("model_type", None)
    base = LlamaForCausalLM(LlamaConfig(**fields))
    state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k and "mm_projector" not in k}
    base.load_state_dict(state)
    base.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reference(tiny_llava_pad):
    tokenizer, model, image_processor, context = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu")
    return tokenizer, model, image_processor, context


def test_full_checkpoint_round_trip(reference, tmp_path):
    tokenizer, model, image_processor, context = reference
    assert isinstance(model, LlavaLlamaForCausalLM) and not model.training
    assert model.dtype == torch.float32 and context == model.config.max_position_embeddings == 2048
    assert image_processor.crop_size["height"] == 48
    model.save_pretrained(tmp_path / "copy")
    tokenizer.save_pretrained(tmp_path / "copy")
    image_processor.save_pretrained(tmp_path / "copy")
    tokenizer2, model2, _, _ = load_pretrained_model(str(tmp_path / "copy"), None, "copy", device="cpu")
    torch.testing.assert_close(logits_of(tokenizer2, model2), logits_of(tokenizer, model))


def test_checkpoint_named_without_llava_is_detected_from_its_config(tiny_llava_pad, tmp_path):
    renamed = shutil.copytree(tiny_llava_pad, tmp_path / "my-finetune")
    _, model, _, _ = load_pretrained_model(str(renamed), None, "my-finetune", device="cpu")
    assert isinstance(model, LlavaLlamaForCausalLM)


def test_tower_comes_from_mm_vision_tower_when_the_checkpoint_lacks_it(reference, tiny_clip, tmp_path):
    tokenizer, model, _, _ = reference
    path = build_tiny_llava(tmp_path / "no-tower", vision_tower=tiny_clip, save_vision_tower=False)
    _, loaded, _, _ = load_pretrained_model(str(path), None, "no-tower", device="cpu")
    from transformers import CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(tiny_clip)
    torch.testing.assert_close(loaded.get_vision_tower().clip.state_dict(), clip.state_dict())


def test_trained_tower_in_the_checkpoint_wins_over_mm_vision_tower(reference, tmp_path):
    tokenizer, model, image_processor, _ = reference
    trained = LlavaLlamaForCausalLM(model.config)
    trained.load_state_dict(model.state_dict())
    with torch.no_grad():
        trained.get_vision_tower().clip.embeddings.patch_embedding.weight.add_(0.5)
    trained.config.unfreeze_mm_vision_tower = True
    trained.save_pretrained(tmp_path / "unfrozen")
    tokenizer.save_pretrained(tmp_path / "unfrozen")
    image_processor.save_pretrained(tmp_path / "unfrozen")
    _, loaded, _, _ = load_pretrained_model(str(tmp_path / "unfrozen"), None, "unfrozen", device="cpu")
    torch.testing.assert_close(
        loaded.get_vision_tower().clip.embeddings.patch_embedding.weight,
        trained.get_vision_tower().clip.embeddings.patch_embedding.weight,
    )


def test_projector_only_checkpoint_over_a_base_llm(reference, tmp_path):
    tokenizer, model, image_processor, _ = reference
    base = save_language_part_as_plain_llama(model, tokenizer, tmp_path / "vicuna-tiny")
    adapter = tmp_path / "llava-tiny-pretrain"
    adapter.mkdir()
    model.config.to_json_file(adapter / "config.json")
    projector = {k: v for k, v in model.state_dict().items() if "mm_projector" in k}
    torch.save(projector, adapter / "mm_projector.bin")
    tokenizer2, loaded, _, _ = load_pretrained_model(str(adapter), str(base), "llava-tiny-pretrain", device="cpu")
    torch.testing.assert_close(logits_of(tokenizer2, loaded), logits_of(tokenizer, model))


def test_lora_adapter_over_a_base_llm_is_merged(reference, tmp_path):
    from peft import LoraConfig, get_peft_model

    tokenizer, model, _, _ = reference
    base = save_language_part_as_plain_llama(model, tokenizer, tmp_path / "vicuna-tiny")
    trained = LlavaLlamaForCausalLM(model.config)
    trained.load_state_dict(model.state_dict())
    with torch.no_grad():
        trained.model.mm_projector[0].weight.mul_(1.5)  # a non-LoRA trainable that changed in training
    torch.manual_seed(3)
    lora = get_peft_model(
        trained, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    expected = logits_of(tokenizer, lora)
    out = tmp_path / "llava-tiny-lora"
    lora.save_pretrained(out)
    model.config.to_json_file(out / "config.json")
    non_lora = {f"base_model.model.{k}": v for k, v in trained.state_dict().items() if "mm_projector" in k}
    torch.save(non_lora, out / "non_lora_trainables.bin")
    tokenizer2, merged, _, _ = load_pretrained_model(str(out), str(base), "llava-tiny-lora", device="cpu")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits_of(tokenizer2, merged), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
def test_bitsandbytes_quantised_load_runs_on_cpu(tiny_llava_pad, reference, bits):
    pytest.importorskip("bitsandbytes")
    tokenizer, model, _, _ = load_pretrained_model(
        str(tiny_llava_pad), None, "tiny", device="cpu", load_4bit=bits == 4, load_8bit=bits == 8
    )
    linear_cls = type(model.model.layers[0].self_attn.q_proj).__name__
    assert linear_cls == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    assert type(model.model.mm_projector[0]).__name__ == "Linear"  # kept in full precision
    quantised = logits_of(tokenizer, model)
    full = logits_of(*reference[:2])
    assert torch.isfinite(quantised).all()
    # Quantisation error on a random tiny model is visible but bounded.
    assert (quantised - full).abs().mean() < 0.5 * full.abs().mean() + 1e-3
    out = model.generate(
        torch.tensor([tokenizer("USER: Hi ASSISTANT:").input_ids]), max_new_tokens=3, min_new_tokens=3, do_sample=False
    )
    assert out.shape == (1, 3)


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_dtype_keyword_overrides_the_cpu_default(tiny_llava_pad, key):
    _, model, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu", **{key: torch.bfloat16})
    assert model.dtype == torch.bfloat16
    assert model.get_vision_tower().clip.dtype == torch.bfloat16


def test_generation_config_asking_for_flash_attention_does_not_break_loading(tiny_llava_pad, tmp_path):
    path = shutil.copytree(tiny_llava_pad, tmp_path / "released-like")
    gen = json.loads((path / "generation_config.json").read_text())
    gen["attn_implementation"] = "flash_attention_2"
    (path / "generation_config.json").write_text(json.dumps(gen))
    tokenizer, model, _, _ = load_pretrained_model(str(path), None, "released-like", device="cpu")
    assert model.config._attn_implementation == "sdpa"
    assert model.generate(torch.tensor([tokenizer("USER: Hi").input_ids]), max_new_tokens=2).shape[0] == 1


def test_use_flash_attn_without_flash_attn_says_so_and_uses_sdpa(tiny_llava_pad, caplog):
    with caplog.at_level(logging.WARNING, logger="llava.model.builder"):
        _, model, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu", use_flash_attn=True)
    assert model.config._attn_implementation == "sdpa"
    assert "flash-attn 2 is not installed" in caplog.text


def test_released_style_config_loads(tiny_llava_pad, tmp_path):
    """Fields the released configs carry beyond ours (and the training list of scales) are accepted."""
    path = shutil.copytree(tiny_llava_pad, tmp_path / "llava-v1.5-7b-m3")
    config = json.loads((path / "config.json").read_text())
    config.update(
        freeze_mm_mlp_adapter=False,
        mm_projector_lr=None,
        use_mm_proj=True,
        tune_mm_mlp_adapter=False,
        matryoshka_vis_token_scale=[576, 144, 36, 9, 1],
        image_aspect_ratio="pad",
        torch_dtype="float16",
    )
    del config["mm_vision_config"]  # released configs only name the tower
    (path / "config.json").write_text(json.dumps(config))
    _, model, _, _ = load_pretrained_model(str(path), None, "llava-v1.5-7b-m3", device="cpu")
    assert model.default_scale == 576 and model.dtype == torch.float32


def test_invalid_scale_in_config_is_rejected_at_load(tiny_llava_pad, tmp_path):
    path = shutil.copytree(tiny_llava_pad, tmp_path / "bad")
    config = json.loads((path / "config.json").read_text())
    config["mm_projector_type"] = "mlp2x_relu"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mm_projector_type='mlp2x_relu' is not supported"):
        load_pretrained_model(str(path), None, "bad", device="cpu")


@pytest.mark.slow
def test_torch_compile_option_compiles_the_vision_path_and_keeps_the_results(tiny_llava_pad, reference, tmp_path):
    tokenizer, eager, _, _ = reference
    _, compiled, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu", torch_compile=True)
    tower = compiled.get_vision_tower()
    assert tower._compiled_call_impl is not None and compiled.model.mm_projector._compiled_call_impl is not None
    with torch.inference_mode():
        torch.testing.assert_close(compiled.encode_images(PIXELS).features, eager.encode_images(PIXELS).features)
    for scale in (576, 9, 1):
        torch.testing.assert_close(logits_of(tokenizer, compiled, scale), logits_of(tokenizer, eager, scale))
    # Compiling in place leaves the parameter names alone: the checkpoint saves as before.
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_torch_compile_on_a_plain_language_model_is_a_clear_error(tiny_llava_pad, tmp_path):
    _, model, _, _ = load_pretrained_model(str(tiny_llava_pad), None, "tiny", device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_pad)
    base = save_language_part_as_plain_llama(model, tokenizer, tmp_path / "vicuna-tiny")
    with pytest.raises(ValueError, match="not a LLaVA checkpoint"):
        load_pretrained_model(str(base), None, "vicuna-tiny", device="cpu", torch_compile=True)
