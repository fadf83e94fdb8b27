"""The M3 operation: validate a visual-token budget and average-pool a token grid down to it.

This module imports only torch. Everything that builds, trains, serves or evaluates M3 goes
through these functions, so the nested token sets are computed the same way everywhere.
"""

from __future__ import annotations

import math
import numbers

import torch

TRAINED_SCALES: tuple[int, ...] = (1, 9, 36, 144, 576)
"""The five budgets the released M3 checkpoints were trained on."""


def valid_scales(grid_side: int) -> list[int]:
    """Budgets reachable by non-overlapping average pooling of a `grid_side`×`grid_side` grid.

    A budget is k² where k divides `grid_side` (each output token averages a (side/k)² block).
    For the 24×24 CLIP-336 grid: [1, 4, 9, 16, 36, 64, 144, 576].
    """
    if grid_side < 1:
        raise ValueError(f"grid side must be positive, got {grid_side}")
    return [k * k for k in range(1, grid_side + 1) if grid_side % k == 0]


def validate_scale(scale: int, grid_side: int) -> int:
    """Return `scale` as an int if it is a valid budget for the grid.

    Raises a TypeError for anything but an integer (strings are parsed at the command-line or HTTP edge
    with `parse_scales`, never here) and a ValueError listing the valid budgets for an integer that is not one.
    """
    allowed = valid_scales(grid_side)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral):
        raise TypeError(
            f"matryoshka_vis_token_scale must be an int, got {type(scale).__name__} {scale!r}; valid values for a "
            f"{grid_side}x{grid_side} grid: {allowed}"
        )
    value = int(scale)
    if value not in allowed:
        raise ValueError(
            f"matryoshka_vis_token_scale={value} is not a valid visual-token budget for a "
            f"{grid_side}x{grid_side} grid; valid values: {allowed} (k*k with k dividing {grid_side})"
        )
    return value


def parse_scales(text: str) -> list[int]:
    """Parse the command-line form of one or several budgets: "36", "1,9,36,144,576" or "[576, 144]".

    Used once at each edge where a budget arrives as text (command-line flags, training arguments);
    the model itself takes ints only. Validation against a grid is separate (`validate_scale`),
    because the grid is known only to the model.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_scales takes the text of a flag, got {type(text).__name__} {text!r}")
    parts = [p.strip() for p in text.strip().strip("[]()").split(",")]
    if not any(parts):
        raise ValueError(f"matryoshka_vis_token_scale={text!r} names no scale; give e.g. 36 or 1,9,36,144,576")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"matryoshka_vis_token_scale={text!r} is not an integer or a comma-separated list of integers"
        ) from None


def pool_visual_tokens(features: torch.Tensor, scale: int) -> torch.Tensor:
    """Average-pool square token grids to `scale` tokens each.

    Args:
        features: (B, H·W, C) tokens of B square H×W grids, row-major.
        scale: output tokens per grid, k² with k dividing H.

    Returns:
        (B, scale, C): token (i, j) of the k×k output is the mean of the (H/k)×(H/k) input block
        at block-row i, block-column j. `scale == H·W` returns `features` unchanged.
    """
    batch, num_tokens, channels = features.shape
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"visual tokens do not form a square grid: {num_tokens} tokens per image")
    scale = validate_scale(scale, side)
    if scale == num_tokens:
        return features
    k = math.isqrt(scale)
    stride = side // k
    # A view (for contiguous input) plus a mean: no transposed copy of the full grid is made, so memory at
    # small budgets does not carry a full-size temporary.
    blocks = features.reshape(batch, k, stride, k, stride, channels)
    return blocks.mean(dim=(2, 4)).reshape(batch, scale, channels)
