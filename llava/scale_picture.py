"""The picture of what the model sees at a budget: the image averaged over each pooling block.

At budget s the 24×24 patch grid of a crop is average-pooled to √s × √s tokens, so each token stands for a
square block of (24/√s)² patches. `scale_picture` shows that in pixels: the image as the model's
preprocessing hands it to the vision tower (padded to a square, or cut into anyres crops), un-normalised,
with every pooling block filled with its mean colour. The tokens average projected features, not
colours, so this is a picture of the resolution the budget leaves, not of the features themselves.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from llava.generation import Generator
from llava.model.anyres import anyres_grid_shape
from llava.model.matryoshka import validate_scale

GAP = 4
"""Pixels between the whole-image crop and the crop grid of an anyres picture."""


def scale_picture(generator: Generator, image: Image.Image, scale: int) -> Image.Image:
    """What `generator`'s model sees of `image` at `scale` visual tokens per crop, as an RGB image.

    Plain checkpoints give the processed square (e.g. 336×336) in blocks; anyres checkpoints give the
    whole-image crop on the left and the crop grid on the right, each crop in its own blocks.
    Raises a ValueError listing the valid budgets for a budget the grid cannot pool to.
    """
    model = generator.model
    grid_side = model.grid_side
    validate_scale(scale, grid_side)
    pixels = generator.pixels([image])[0]
    crops = _unnormalise(pixels if pixels.ndim == 4 else pixels[None], generator.image_processor)
    pooled = _block_average(crops, math.isqrt(scale))
    if pooled.shape[0] == 1:
        return _to_image(pooled[0])
    cols, rows = anyres_grid_shape(image.size, model.config.image_grid_pinpoints, pooled.shape[-1])
    return _anyres_layout(pooled[0], pooled[1:], rows, cols)


def _unnormalise(crops: torch.Tensor, image_processor: Any) -> torch.Tensor:
    """(n, 3, H, W) processor output back to colours in [0, 1]."""
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(image_processor.image_std, dtype=torch.float32)[None, :, None, None]
    return (crops.float() * std + mean).clamp(0, 1)


def _block_average(crops: torch.Tensor, k: int) -> torch.Tensor:
    """Each (H, W) crop as a k×k grid of blocks, every block its mean colour; same size out."""
    _, _, height, width = crops.shape
    means = torch.nn.functional.adaptive_avg_pool2d(crops, (k, k))
    return means.repeat_interleave(height // k, dim=2).repeat_interleave(width // k, dim=3)


def _anyres_layout(base: torch.Tensor, crops: torch.Tensor, rows: int, cols: int) -> Image.Image:
    """The whole-image crop (scaled to the grid's height) beside the crops stitched in their grid."""
    _, side, _ = base.shape
    grid = crops.view(rows, cols, 3, side, side).permute(2, 0, 3, 1, 4).reshape(3, rows * side, cols * side)
    picture = Image.new("RGB", (rows * side + GAP + cols * side, rows * side), (255, 255, 255))
    picture.paste(_to_image(base).resize((rows * side, rows * side), Image.Resampling.NEAREST), (0, 0))
    picture.paste(_to_image(grid), (rows * side + GAP, 0))
    return picture


def _to_image(colours: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] → an RGB PIL image."""
    array = (colours * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array)
