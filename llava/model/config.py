"""The multimodal half of every LLaVA/M3 config, shared by all language-model families.

The field names and meanings are those of the released LLaVA/M3 `config.json` files, so those
checkpoints load unchanged; each family's config (`LlavaConfig` for Llama, ...) mixes this in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llava.model.matryoshka import parse_scales

PROJECTOR_PATTERN = re.compile(r"^(linear|identity|mlp(\d+)x_gelu)$")
ASPECT_RATIOS = ("square", "pad", "anyres")
MERGE_TYPES = ("flat", "spatial", "spatial_unpad")
SELECT_FEATURES = ("patch", "cls_patch")
PADDING_SIDES = ("left", "right")


@dataclass(kw_only=True, repr=False)
class LlavaMultimodalConfig:
    """Multimodal fields of a LLaVA/M3 config; validated by `validate_multimodal()`."""

    mm_vision_tower: str | None = None
    """CLIP tower: a local folder or hub id (e.g. "openai/clip-vit-large-patch14-336")."""
    mm_vision_config: dict | None = None
    """The tower's CLIPVisionConfig as a dict, stored when we save so loading needs no hub."""
    mm_hidden_size: int | None = None
    mm_projector_type: str = "linear"
    mm_vision_select_layer: int = -1
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str | None = "square"
    image_grid_pinpoints: list | str | None = None
    mm_patch_merge_type: str = "flat"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    unfreeze_mm_vision_tower: bool = False
    tune_mm_mlp_adapter: bool = False
    matryoshka_vis_token_scale: int | list | str | None = None
    """The M3 budget: an int (inference default) or a list (the scales trained on at once)."""
    matryoshka_scale_weights: list | None = None
    """Optional weight per trained scale for the M3 loss (default: plain mean)."""
    tokenizer_padding_side: str = "right"
    tokenizer_model_max_length: int | None = None
    conv_template: str | None = None
    """Conversation template the checkpoint was trained with (see llava.conversation)."""

    def validate_multimodal(self) -> None:
        """Normalise the scale setting and reject values no code path supports."""
        if not PROJECTOR_PATTERN.match(self.mm_projector_type):
            raise ValueError(
                f"mm_projector_type={self.mm_projector_type!r} is not supported; "
                "use 'linear', 'identity' or 'mlp{N}x_gelu' (e.g. 'mlp2x_gelu')"
            )
        if self.mm_vision_select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"mm_vision_select_feature={self.mm_vision_select_feature!r} is not one of {list(SELECT_FEATURES)}"
            )
        aspect = self.image_aspect_ratio
        if aspect is not None and aspect not in ASPECT_RATIOS and not re.fullmatch(r"anyres_max_\d+", aspect):
            raise ValueError(f"image_aspect_ratio={aspect!r} is not one of {list(ASPECT_RATIOS)} or 'anyres_max_N'")
        if self.mm_patch_merge_type not in MERGE_TYPES:
            raise ValueError(f"mm_patch_merge_type={self.mm_patch_merge_type!r} is not one of {list(MERGE_TYPES)}")
        if self.mm_vision_select_feature == "cls_patch" and self.mm_patch_merge_type != "flat":
            raise ValueError(
                f"mm_vision_select_feature='cls_patch' keeps the CLS token, which has no place in the "
                f"{self.mm_patch_merge_type!r} crop grid; use 'patch' or mm_patch_merge_type='flat'"
            )
        if self.tokenizer_padding_side not in PADDING_SIDES:
            raise ValueError(f"tokenizer_padding_side={self.tokenizer_padding_side!r} is not 'left' or 'right'")
        scales = parse_scales(self.matryoshka_vis_token_scale)
        if scales is not None and not scales:
            scales = None
        # One int means an inference default; a list (even of one) is what training cycles through.
        if isinstance(self.matryoshka_vis_token_scale, int) or scales is None:
            self.matryoshka_vis_token_scale = None if scales is None else scales[0]
        else:
            self.matryoshka_vis_token_scale = scales
        if self.matryoshka_scale_weights is not None:
            if not isinstance(self.matryoshka_vis_token_scale, list):
                raise ValueError("matryoshka_scale_weights needs a list of scales in matryoshka_vis_token_scale")
            if len(self.matryoshka_scale_weights) != len(self.matryoshka_vis_token_scale):
                raise ValueError(
                    f"matryoshka_scale_weights has {len(self.matryoshka_scale_weights)} weights for "
                    f"{len(self.matryoshka_vis_token_scale)} scales {self.matryoshka_vis_token_scale}"
                )
            if any(float(w) < 0 for w in self.matryoshka_scale_weights) or sum(self.matryoshka_scale_weights) <= 0:
                raise ValueError(
                    f"matryoshka_scale_weights must be non-negative with a positive sum, got "
                    f"{self.matryoshka_scale_weights}"
                )

    @property
    def is_anyres(self) -> bool:
        return self.image_aspect_ratio is not None and self.image_aspect_ratio.startswith("anyres")

    @property
    def training_scales(self) -> list[int] | None:
        """The scales of the M3 objective, or None when the config names a single budget."""
        value = self.matryoshka_vis_token_scale
        return list(value) if isinstance(value, list) else None

    @property
    def default_scale(self) -> int | None:
        """Inference budget when a call names none: the config's int, or the largest trained scale."""
        value: Any = self.matryoshka_vis_token_scale
        if isinstance(value, list):
            return max(value)
        return value
