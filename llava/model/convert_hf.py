"""Build transformers' own `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration`
with the weights of an M3 model, for parity tests and side-by-side benchmarks.

At the full budget (576 tokens per grid) both compute the same function; transformers' classes
have no M3 pooling, so only the full budget can be compared.
"""

from __future__ import annotations

import torch
from transformers import LlavaConfig as HFLlavaConfig
from transformers import (
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

_RENAMES = [
    ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.image_newline", "model.image_newline"),
    ("model.", "model.language_model."),
]


def hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an M3 state dict to transformers' Llava/LlavaNext layout."""
    out = {}
    for key, value in model.state_dict().items():
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def to_hf_llava(model: torch.nn.Module, image_token_index: int) -> torch.nn.Module:
    """transformers' LLaVA (pad checkpoints) or LLaVA-NeXT (anyres) holding `model`'s weights.

    Only Llama language models and the `mlp2x_gelu` projector map onto transformers' classes.
    `image_token_index` is the id transformers expects, repeated once per visual token.
    """
    config = model.config
    if config.model_type != "llava_llama" or config.mm_projector_type != "mlp2x_gelu":
        raise ValueError("only llava_llama checkpoints with an mlp2x_gelu projector map onto transformers' LLaVA")
    text = {
        k: v for k, v in config.to_dict().items() if not k.startswith(("mm_", "matryoshka", "image_", "tokenizer_"))
    }
    text["model_type"] = "llama"
    common = dict(
        vision_config=model.get_vision_tower().config.to_dict(),
        text_config=text,
        image_token_index=image_token_index,
        vision_feature_layer=config.mm_vision_select_layer,
        vision_feature_select_strategy="default" if config.mm_vision_select_feature == "patch" else "full",
        projector_hidden_act="gelu",
    )
    if config.is_anyres:
        # transformers counts sizes as (height, width); LLaVA as (width, height).
        pinpoints = [[h, w] for w, h in config.image_grid_pinpoints]
        hf_config = LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
        hf_class = LlavaNextForConditionalGeneration
    else:
        hf_config, hf_class = HFLlavaConfig(**common), LlavaForConditionalGeneration
    param = next(model.parameters())
    # Built where the weights are, in their dtype: a 7B copy on the CPU in float32 would not fit.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(param.dtype)
    try:
        with torch.device(param.device):
            hf = hf_class(hf_config)
    finally:
        torch.set_default_dtype(default_dtype)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise ValueError(f"weights did not map onto transformers' LLaVA: missing {missing}, unexpected {unexpected}")
    return hf.eval()
