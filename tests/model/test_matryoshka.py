"""The M3 operation: budgets, pooling against an explicit block average, parsing."""

from __future__ import annotations

import pytest
import torch

from llava.model.matryoshka import parse_scales, pool_visual_tokens, valid_scales, validate_scale


def explicit_block_average(features: torch.Tensor, scale: int) -> torch.Tensor:
    """Reference: loop over output cells and average each (side/k)² block by hand."""
    batch, tokens, channels = features.shape
    side, k = int(tokens**0.5), int(scale**0.5)
    block = side // k
    grid = features.view(batch, side, side, channels)
    out = torch.empty(batch, k * k, channels, dtype=features.dtype)
    for i in range(k):
        for j in range(k):
            cell = grid[:, i * block : (i + 1) * block, j * block : (j + 1) * block]
            out[:, i * k + j] = cell.reshape(batch, -1, channels).mean(dim=1)
    return out


def test_valid_scales_for_the_clip_grid():
    assert valid_scales(24) == [1, 4, 9, 16, 36, 64, 144, 576]
    assert valid_scales(7) == [1, 49]


@pytest.mark.parametrize("scale", [576, 144, 64, 36, 16, 9, 4, 1])
def test_pooling_equals_explicit_block_average(scale):
    torch.manual_seed(scale)
    features = torch.randn(3, 576, 5, dtype=torch.float64)
    torch.testing.assert_close(pool_visual_tokens(features, scale), explicit_block_average(features, scale))


def test_full_scale_is_identity_and_nested_scales_average_each_other():
    features = torch.randn(2, 576, 4)
    assert pool_visual_tokens(features, 576) is features
    # A 3x3 token is the mean of the 2x2 group of 6x6 tokens under it: the sets are nested.
    torch.testing.assert_close(pool_visual_tokens(pool_visual_tokens(features, 36), 9), pool_visual_tokens(features, 9))


@pytest.mark.parametrize("bad", [100, 0, 25, 577, -9])
def test_invalid_scale_is_an_error_listing_valid_values(bad):
    with pytest.raises(ValueError, match=r"valid values: \[1, 4, 9, 16, 36, 64, 144, 576\]"):
        validate_scale(bad, 24)
    with pytest.raises(ValueError, match="valid values"):
        pool_visual_tokens(torch.randn(1, 576, 2), bad)


@pytest.mark.parametrize("bad", [2.5, 36.0, "36", True, None, [36]])
def test_non_integer_scale_is_a_type_error_naming_the_type(bad):
    with pytest.raises(TypeError, match=rf"must be an int, got {type(bad).__name__}"):
        validate_scale(bad, 24)


def test_non_square_grid_is_an_error():
    with pytest.raises(ValueError, match="square grid"):
        pool_visual_tokens(torch.randn(1, 577, 2), 9)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("36", [36]),
        (" 9 ", [9]),
        ("1,9,36,144,576", [1, 9, 36, 144, 576]),
        ("[576, 144, 36, 9, 1]", [576, 144, 36, 9, 1]),
    ],
)
def test_parse_scales_reads_the_command_line_forms(text, expected):
    assert parse_scales(text) == expected


def test_parse_scales_rejects_garbage_and_takes_text_only():
    with pytest.raises(ValueError, match="comma-separated"):
        parse_scales("1,nine")
    with pytest.raises(ValueError, match="names no scale"):
        parse_scales(" ")
    with pytest.raises(TypeError, match="text of a flag"):
        parse_scales(36)
