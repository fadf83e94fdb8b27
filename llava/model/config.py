"""The multimodal half of every LLaVA/M3 config, shared by all language-model families.

The field names and meanings are those of the released LLaVA/M3 `config.json` files, so those
checkpoints load unchanged; each family's config (`LlavaConfig` for Llama, ...) mixes this in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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
    matryoshka_train_scales: list[int] | None = None
    """The budgets the M3 objective trains on at once (`--matryoshka_vis_token_scale 1,9,36,144,576`).

    Saved under the released checkpoints' key `matryoshka_vis_token_scale` (see that property), which the
    original code reads as the list of budgets to train on, so checkpoints we save stay loadable there."""
    matryoshka_default_scale: int | None = None
    """The budget of a call that names none; None: the largest trained budget, else the full grid."""
    matryoshka_scale_weights: list | None = None
    """Optional weight per trained scale for the M3 loss (default: plain mean)."""
    tokenizer_padding_side: str = "right"
    tokenizer_model_max_length: int | None = None
    conv_template: str | None = None
    """Conversation template the checkpoint was trained with (see llava.conversation)."""

    def validate_multimodal(self) -> None:
        """Reject layout values no code path supports (the budgets are checked in `__post_init__`)."""
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

    @property
    def is_anyres(self) -> bool:
        return self.image_aspect_ratio is not None and self.image_aspect_ratio.startswith("anyres")

    def default_scale_for(self, grid_side: int) -> int:
        """The budget of a call that names none, for a `grid_side`² token grid (not yet validated against it):
        `matryoshka_default_scale`, else the largest trained budget, else the full grid."""
        if self.matryoshka_default_scale is not None:
            return self.matryoshka_default_scale
        if self.matryoshka_train_scales:
            return max(self.matryoshka_train_scales)
        return grid_side * grid_side

    def __post_init__(self, **kwargs: Any) -> None:
        # The released checkpoints' `matryoshka_vis_token_scale` arrives among the extra kwargs the family
        # config's own __post_init__ sets, so the budgets are checked after it.
        self.validate_multimodal()
        super().__post_init__(**kwargs)
        self._check_scales()

    def _check_scales(self) -> None:
        scales, weights = self.matryoshka_train_scales, self.matryoshka_scale_weights
        if scales is not None:
            scales = self.matryoshka_train_scales = _int_list(scales, "matryoshka_train_scales") or None
        default = self.matryoshka_default_scale
        if default is not None and (isinstance(default, bool) or not isinstance(default, int)):
            raise ValueError(f"matryoshka_default_scale must be an int or null, got {default!r}")
        if weights is None:
            return
        if scales is None:
            raise ValueError("matryoshka_scale_weights needs the list of trained scales (matryoshka_vis_token_scale)")
        if len(weights) != len(scales):
            raise ValueError(f"matryoshka_scale_weights has {len(weights)} weights for {len(scales)} scales {scales}")
        if any(float(w) < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"matryoshka_scale_weights must be non-negative with a positive sum, got {weights}")

    @property
    def matryoshka_vis_token_scale(self) -> list[int] | None:
        """The released checkpoints' key: the list of trained budgets (`matryoshka_train_scales`).

        Setting it, as loading a released `config.json` does, fills the field its value means: a list sets
        the trained budgets, an int (IG-VLM's way of choosing a budget) the default budget.
        """
        return self.matryoshka_train_scales

    @matryoshka_vis_token_scale.setter
    def matryoshka_vis_token_scale(self, value: int | list[int] | None) -> None:
        if value is None or isinstance(value, list | tuple):
            self.matryoshka_train_scales = None if value is None else _int_list(value, "matryoshka_vis_token_scale")
        elif isinstance(value, int) and not isinstance(value, bool):
            self.matryoshka_default_scale = value
        else:
            raise ValueError(
                f"matryoshka_vis_token_scale in a config must be a list of ints (the trained budgets), an int (the "
                f"default budget) or null, got {value!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as saved: the trained budgets under the released checkpoints' key."""
        output = super().to_dict()
        output["matryoshka_vis_token_scale"] = output.pop("matryoshka_train_scales", None)
        return output


def _int_list(values: Any, name: str) -> list[int]:
    if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be a list of ints, got {values!r}")
    return [int(v) for v in values]
