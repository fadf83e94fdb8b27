"""Projectors from vision features to the language model's embedding space."""

from __future__ import annotations

from torch import nn

from llava.model.config import PROJECTOR_PATTERN


def build_vision_projector(projector_type: str, vision_hidden: int, text_hidden: int) -> nn.Module:
    """`linear`, `identity` or `mlp{N}x_gelu` (N linear layers with GELU between them).

    Module indices match the released checkpoints: mlp2x_gelu is `Sequential(Linear, GELU, Linear)`,
    whose weights are `mm_projector.0.*` and `mm_projector.2.*`.
    """
    match = PROJECTOR_PATTERN.match(projector_type)
    if match is None:
        raise ValueError(f"unknown projector type {projector_type!r}; use linear, identity or mlp{{N}}x_gelu")
    if projector_type == "identity":
        if vision_hidden != text_hidden:
            raise ValueError(f"identity projector needs equal widths, got vision {vision_hidden} vs text {text_hidden}")
        return nn.Identity()
    if projector_type == "linear":
        return nn.Linear(vision_hidden, text_hidden)
    depth = int(match.group(2))
    layers: list[nn.Module] = [nn.Linear(vision_hidden, text_hidden)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(text_hidden, text_hidden)]
    return nn.Sequential(*layers)
