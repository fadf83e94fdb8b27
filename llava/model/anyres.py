"""Geometry of LLaVA-NeXT "anyres" images: choosing the crop grid and removing the padding.

Sizes follow the original LLaVA convention: an image size is (width, height), as PIL's
`Image.size` gives it, and a grid pinpoint is (width, height) in pixels.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence

import torch

Size = tuple[int, int]


def parse_grid_pinpoints(pinpoints: str | Sequence[Sequence[int]], patch_size: int = 336) -> list[Size]:
    """Turn a config's `image_grid_pinpoints` into a list of (width, height) resolutions.

    Accepts a list of pairs, its string form "[(336, 672), (672, 336)]", or the range form
    "(1x1),...,(3x3)" used by later LLaVA-NeXT configs (grids of `patch_size` tiles).
    """
    if isinstance(pinpoints, str):
        text = pinpoints.strip()
        if "x" in text and "," in text and "..." in text:
            found = [tuple(map(int, m)) for m in re.findall(r"\((\d+)x(\d+)\)", text)]
            if len(found) != 2:
                raise ValueError(f"cannot read image_grid_pinpoints range {pinpoints!r}; expected '(1x1),...,(3x3)'")
            (r0, c0), (r1, c1) = found
            return [(j * patch_size, i * patch_size) for i in range(r0, r1 + 1) for j in range(c0, c1 + 1)]
        try:
            pinpoints = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(
                f"cannot read image_grid_pinpoints {pinpoints!r}; expected a list of (width, height)"
            ) from None
    result = []
    for pair in pinpoints:
        if len(pair) != 2 or any(int(v) <= 0 for v in pair):
            raise ValueError(f"image_grid_pinpoints entry {pair!r} is not a positive (width, height) pair")
        result.append((int(pair[0]), int(pair[1])))
    if not result:
        raise ValueError("image_grid_pinpoints is empty")
    return result


def select_best_resolution(original_size: Size, possible_resolutions: Sequence[Size]) -> Size:
    """Pick the (width, height) resolution that keeps the most image pixels, then wastes the fewest."""
    original_width, original_height = original_size
    best: Size | None = None
    best_effective, best_wasted = -1, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        down_w, down_h = int(original_width * scale), int(original_height * scale)
        effective = min(down_w * down_h, original_width * original_height)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (width, height), effective, wasted
    assert best is not None
    return best


def anyres_grid_shape(image_size: Size, grid_pinpoints: str | Sequence[Sequence[int]], crop_size: int) -> Size:
    """(columns, rows) of `crop_size` crops that the image is cut into."""
    width, height = select_best_resolution(image_size, parse_grid_pinpoints(grid_pinpoints, crop_size))
    return width // crop_size, height // crop_size


def unpadded_shape(grid_height: int, grid_width: int, original_size: Size) -> Size:
    """(rows, columns) left of a (grid_height, grid_width) feature map once the letterbox padding is cut.

    The image was resized to fit the crop grid keeping its aspect ratio and centred; the padded
    rows (or columns) carry no image and are removed, rounding as LLaVA-NeXT does.
    """
    original_width, original_height = original_size
    if original_width / original_height > grid_width / grid_height:
        scale = grid_width / original_width
        new_height = int(round(original_height * scale, 7))
        padding = (grid_height - new_height) // 2
        return grid_height - 2 * padding, grid_width
    scale = grid_height / original_height
    new_width = int(round(original_width * scale, 7))
    padding = (grid_width - new_width) // 2
    return grid_height, grid_width - 2 * padding


def unpad_image(features: torch.Tensor, original_size: Size) -> torch.Tensor:
    """Cut the letterbox padding from a (C, H, W) feature map of an image of `original_size` (w, h)."""
    _, height, width = features.shape
    new_h, new_w = unpadded_shape(height, width, original_size)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    return features[:, top : top + new_h, left : left + new_w]


def merge_anyres_features(
    features: torch.Tensor,
    image_size: Size,
    grid_pinpoints: str | Sequence[Sequence[int]],
    crop_size: int,
    merge_type: str,
    image_newline: torch.Tensor | None,
) -> torch.Tensor:
    """Lay out one anyres image's pooled crop features as LLaVA-NeXT does.

    Args:
        features: (1 + n, k², C): the base (whole-image) crop first, then n crops row-major,
            each already pooled to a k×k grid (k = 24 at the full budget).
        image_size: the image's (width, height) before processing.
        grid_pinpoints, crop_size: as in the config / vision tower, to recover the crop grid.
        merge_type: "flat" (crops concatenated), "spatial" (crops stitched into one grid) or
            "spatial_unpad" (stitched, padding removed, `image_newline` after every row).
        image_newline: (C,) learned row separator, needed for "spatial_unpad".

    Returns:
        (T, C) visual tokens: base tokens first, then the merged crops.
    """
    if merge_type == "flat" or features.shape[0] == 1:
        tokens = features.flatten(0, 1)
        if merge_type == "spatial_unpad" and image_newline is not None:
            tokens = torch.cat([tokens, image_newline[None].to(tokens.dtype)], dim=0)
        return tokens
    base, crops = features[0], features[1:]
    side = math.isqrt(crops.shape[1])
    cols, rows = anyres_grid_shape(image_size, grid_pinpoints, crop_size)
    if rows * cols != crops.shape[0]:
        raise ValueError(
            f"image of size {image_size} should give {rows}x{cols} crops for grid pinpoints "
            f"{grid_pinpoints}, but {crops.shape[0]} crops were given"
        )
    grid = crops.view(rows, cols, side, side, -1)
    if merge_type == "spatial":
        return torch.cat([base, grid.permute(0, 2, 1, 3, 4).flatten(0, 3)], dim=0)
    if image_newline is None:
        raise ValueError("mm_patch_merge_type 'spatial_unpad' needs the model's image_newline")
    channels_first = grid.permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # (C, rows*k, cols*k)
    unpadded = unpad_image(channels_first, image_size)
    newline = image_newline[:, None, None].to(unpadded.dtype).expand(-1, unpadded.shape[1], 1)
    with_newlines = torch.cat([unpadded, newline], dim=-1)
    return torch.cat([base, with_newlines.flatten(1, 2).transpose(0, 1)], dim=0)


def count_anyres_tokens(
    scale: int,
    image_size: Size,
    grid_pinpoints: str | Sequence[Sequence[int]],
    crop_size: int,
    merge_type: str,
) -> int:
    """Visual tokens `merge_anyres_features` yields for one image at `scale` tokens per crop."""
    cols, rows = anyres_grid_shape(image_size, grid_pinpoints, crop_size)
    if merge_type != "spatial_unpad":
        return scale * (1 + rows * cols)
    k = math.isqrt(scale)
    height, width = unpadded_shape(rows * k, cols * k, image_size)
    return scale + height * (width + 1)
