"""The M3 operation: validate a visual-token budget and average-pool a token grid down to it.

This module imports only torch. Everything that builds, trains, serves or evaluates M3 goes
through these functions, so the nested token sets are computed the same way everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    """Return `scale` as an int if it is a valid budget for the grid, else raise a ValueError listing them."""
    allowed = valid_scales(grid_side)
    if isinstance(scale, bool) or not _is_integral(scale):
        raise ValueError(
            f"matryoshka_vis_token_scale must be an integer, got {scale!r}; valid values for a "
            f"{grid_side}x{grid_side} grid: {allowed}"
        )
    value = int(scale)
    if value not in allowed:
        raise ValueError(
            f"matryoshka_vis_token_scale={value} is not a valid visual-token budget for a "
            f"{grid_side}x{grid_side} grid; valid values: {allowed} (k*k with k dividing {grid_side})"
        )
    return value


def _is_integral(value: object) -> bool:
    try:
        return float(value) == int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def parse_scales(value: int | str | Sequence[int] | None) -> list[int] | None:
    """Parse the command-line / config forms of a scale setting into a list of ints.

    Accepts None, an int, "36", "1,9,36,144,576", "[576, 144]" or a sequence of ints. Validation
    against a grid is separate (`validate_scale`), because the grid is known only to the model.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"matryoshka_vis_token_scale must be an integer or a list of integers, got {value!r}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        if not text or text.lower() == "none":
            return None
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            return [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"matryoshka_vis_token_scale={value!r} is not an integer or a comma-separated list of integers"
            ) from None
    scales = list(value)
    for s in scales:
        if isinstance(s, bool) or not _is_integral(s):
            raise ValueError(f"matryoshka_vis_token_scale list holds a non-integer value {s!r}")
    return [int(s) for s in scales]


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


def pool_to_scales(features: torch.Tensor, scales: Sequence[int]) -> dict[int, torch.Tensor]:
    """Pool one set of grid features to several budgets (the vision tower ran once for all of them).

    Args:
        features: (B, H·W, C) as in `pool_visual_tokens`.
        scales: budgets to build; duplicates are built once.

    Returns:
        {scale: (B, scale, C)}.
    """
    return {s: pool_visual_tokens(features, s) for s in dict.fromkeys(scales)}
