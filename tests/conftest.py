"""Shared fixtures: tiny random LLaVA/M3 checkpoints written in the real on-disk format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from llava.testing import ANYRES_PINPOINTS, build_tiny_clip, build_tiny_llava

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_llava_pad(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Path:
    """LLaVA-1.5-style checkpoint: pad images, mlp2x_gelu, released-style list of trained scales."""
    return build_tiny_llava(
        tmp_path_factory.mktemp("ckpt") / "llava-v1.5-tiny-m3",
        vision_tower=tiny_clip,
        matryoshka_vis_token_scale=[576, 144, 36, 9, 1],
    )


@pytest.fixture(scope="session")
def tiny_llava_anyres(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> Path:
    """LLaVA-NeXT-style checkpoint: anyres crops, spatial_unpad merge with image_newline."""
    return build_tiny_llava(
        tmp_path_factory.mktemp("ckpt") / "llava-next-vicuna-tiny-m3",
        vision_tower=tiny_clip,
        image_aspect_ratio="anyres",
        image_grid_pinpoints=ANYRES_PINPOINTS,
        mm_patch_merge_type="spatial_unpad",
    )
