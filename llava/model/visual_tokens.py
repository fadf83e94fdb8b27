"""How many visual tokens one image costs at a budget: what the splice inserts, and what vLLM reserves.

Our model (`LlavaMetaForCausalLM.num_visual_tokens`) and the vLLM plugin's processor (the number of
placeholder tokens per image) both count with this one function, so the prompt vLLM builds can never
hold a different number of positions than the model fills.
"""

from __future__ import annotations

from llava.model.anyres import Size, count_anyres_tokens
from llava.model.config import LlavaMultimodalConfig
from llava.model.matryoshka import validate_scale


def count_visual_tokens(
    config: LlavaMultimodalConfig, scale: int, grid_side: int, crop_size: int, image_size: Size | None = None
) -> int:
    """Visual tokens one image costs at `scale` tokens per crop, `image_newline` rows included.

    `grid_side` is the tower's token-grid side (24 for CLIP ViT-L/14 at 336 px) and `crop_size` its input
    side in pixels; `image_size` is (width, height) and matters only for anyres checkpoints, where a
    square image on a 2×2 grid with `spatial_unpad` costs s + 2√s·(2√s + 1) (576 → 2928, 9 → 51).
    An invalid `scale` is a ValueError listing the valid ones.
    """
    scale = validate_scale(scale, grid_side)
    per_crop = scale + (1 if config.mm_vision_select_feature == "cls_patch" else 0)
    if not config.is_anyres:
        return per_crop
    if image_size is None:
        raise ValueError("anyres checkpoints need the image size (width, height) to count visual tokens")
    return count_anyres_tokens(per_crop, image_size, config.image_grid_pinpoints, crop_size, config.mm_patch_merge_type)
