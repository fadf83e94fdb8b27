"""An M3 checkpoint rewritten for vLLM's own LLaVA (transformers' `LlavaForConditionalGeneration` layout).

Not a way to serve M3 (vLLM's LLaVA knows no budget and always spends 576 tokens per image): it is the
baseline of `benchmarks/bench_vllm.py` (the same weights, vLLM's own model) and the engine that
tests/vllm uses to show what serving an M3 checkpoint without the plugin would silently do.
"""

from __future__ import annotations

from pathlib import Path

from transformers import LlavaProcessor

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.model.builder import load_pretrained_model
from llava.model.convert_hf import to_hf_llava


def save_plain_llava(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write `checkpoint` (an M3 pad checkpoint) as a transformers LLaVA folder vLLM's LlavaForConditionalGeneration loads."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    tokenizer, model, image_processor, _ = load_pretrained_model(str(checkpoint), None, checkpoint.name, device="cpu")
    if model.config.is_anyres:
        raise ValueError(f"{checkpoint} is an anyres checkpoint; only pad checkpoints map onto vLLM's LLaVA")
    # transformers' LLaVA marks each visual token with its own `<image>` id, one past the text vocabulary.
    tokenizer.add_tokens([DEFAULT_IMAGE_TOKEN], special_tokens=True)
    hf = to_hf_llava(model, tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN))
    # The text config is copied from the M3 config, architecture included; vLLM builds the language model
    # from it, and it must be the plain Llama, not the M3 class the plugin registers for that name.
    hf.config.text_config.architectures = ["LlamaForCausalLM"]
    # vLLM reads the tower under its pre-transformers-5 name, `vision_tower.vision_model.*`.
    state = {
        key.replace("model.vision_tower.", "model.vision_tower.vision_model.", 1): value
        for key, value in hf.state_dict().items()
    }
    hf.save_pretrained(out_dir, state_dict=state)
    tower = model.get_vision_tower()
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=tower.config.patch_size,
        vision_feature_select_strategy=hf.config.vision_feature_select_strategy,
        image_token=DEFAULT_IMAGE_TOKEN,
    ).save_pretrained(out_dir)
    return out_dir
