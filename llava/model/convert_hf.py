"""Between our LLaVA/M3 classes and transformers' own `LlavaForConditionalGeneration` /
`LlavaNextForConditionalGeneration` (the llava-hf layout), both ways.

- `to_hf_llava`: transformers' model holding an M3 model's weights, for parity tests and
  side-by-side benchmarks. At the full budget (576 tokens per grid) both compute the same function;
  transformers' classes have no M3 pooling, so only the full budget can be compared.
- `m3_config_from_hf` and `HF_KEY_MAPPING`: a llava-hf checkpoint read into our classes (by
  `llava.model.builder`), where every budget is available as for our own checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)
from transformers import LlavaConfig as HFLlavaConfig

from llava.model import LLAVA_MODEL_CLASSES, PLAIN_LLM_FAMILIES
from llava.model.config import LlavaMultimodalConfig

HF_LLAVA_MODEL_TYPES = ("llava", "llava_next")
# llava-hf weight names (as on the hub, `language_model.model.*`, and as transformers 5 keeps them in
# memory, `model.language_model.*`) → ours; for `from_pretrained(key_mapping=...)`.
HF_KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^model\.language_model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^(model\.)?vision_tower\.(vision_model\.)?": "model.vision_tower.vision_tower.vision_model.",
    r"^(model\.)?multi_modal_projector\.linear_1\.": "model.mm_projector.0.",
    r"^(model\.)?multi_modal_projector\.linear_2\.": "model.mm_projector.2.",
    r"^(model\.)?image_newline$": "model.image_newline",
}

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


def m3_config_from_hf(fields: dict[str, Any], checkpoint: str) -> LlavaMultimodalConfig:
    """Our config for a llava-hf checkpoint's `config.json` fields (`model_type` llava or llava_next).

    The language model's fields come from `text_config`, the tower's from `vision_config`; the tower's
    weights are inside the checkpoint, so `mm_vision_tower` names the checkpoint itself. LLaVA-1.5
    checkpoints converted to llava-hf were trained on images padded to a square (`pad`); LLaVA-NeXT
    ones on anyres crops with `spatial_unpad`, as their original configs say.
    """
    fields = {k: v for k, v in fields.items() if k != "architectures"}
    next_layout = fields["model_type"] == "llava_next"
    hf = (LlavaNextConfig if next_layout else HFLlavaConfig).from_dict(fields)
    text, vision = hf.text_config.to_dict(), hf.vision_config
    problems = []
    if text["model_type"] not in PLAIN_LLM_FAMILIES:
        problems.append(f"language model {text['model_type']!r} (M3 has {', '.join(PLAIN_LLM_FAMILIES)})")
    if vision.model_type != "clip_vision_model":
        problems.append(f"vision tower {vision.model_type!r} (M3 has clip_vision_model)")
    if not isinstance(hf.vision_feature_layer, int):
        problems.append(f"vision_feature_layer={hf.vision_feature_layer} (M3 reads one layer)")
    if hf.projector_hidden_act != "gelu" or not hf.multimodal_projector_bias:
        problems.append(f"a projector with {hf.projector_hidden_act!r} (M3 maps mlp2x_gelu)")
    if problems:
        raise ValueError(f"{checkpoint} is a transformers LLaVA checkpoint M3 cannot hold: " + "; ".join(problems))
    multimodal: dict[str, Any] = dict(
        mm_vision_tower=checkpoint,
        mm_vision_config=CLIPVisionConfig(**{k: v for k, v in vision.to_dict().items() if k != "model_type"}).to_dict(),
        mm_hidden_size=vision.hidden_size,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=hf.vision_feature_layer,
        mm_vision_select_feature="patch" if hf.vision_feature_select_strategy == "default" else "cls_patch",
        image_aspect_ratio="pad",
    )
    if next_layout:
        # transformers counts sizes as (height, width); LLaVA as (width, height).
        pinpoints = [[w, h] for h, w in hf.image_grid_pinpoints]
        multimodal.update(
            image_aspect_ratio="anyres", image_grid_pinpoints=pinpoints, mm_patch_merge_type="spatial_unpad"
        )
    config_cls = LLAVA_MODEL_CLASSES[PLAIN_LLM_FAMILIES[text["model_type"]]][0]
    language = {k: v for k, v in text.items() if k not in ("model_type", "architectures")}
    return config_cls.from_dict({**language, **multimodal})
