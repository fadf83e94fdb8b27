"""Tiny training assets: M3-Shapes data at the tiny CLIP's 48 px and a plain Llama to pretrain from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from train_helpers import TEXT_ONLY_RECORDS, write_json
from transformers import LlamaConfig, LlamaForCausalLM

from llava.data.shapes import generate_split
from llava.testing import TINY_LLM_FIELDS, build_tiny_tokenizer


@dataclass(frozen=True)
class TrainData:
    folder: Path
    """Image folder (`--image_folder`)."""
    images: Path
    """12 image records (questions about two images), LLaVA JSON."""
    mixed: Path
    """4 image records + 2 text-only records: an odd mix for the modality sampler and resume."""


@pytest.fixture(scope="session")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> TrainData:
    folder = tmp_path_factory.mktemp("shapes")
    records = generate_split(folder, "train", num_images=3, seed=0, image_size=48)
    images = write_json(folder / "images12.json", records[:12])
    mixed = write_json(folder / "mixed.json", records[:4] + TEXT_ONLY_RECORDS)
    return TrainData(folder, images, mixed)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain 2-layer Llama with the tiny tokenizer: the start point of projector pretraining."""
    out = tmp_path_factory.mktemp("llm") / "tiny-llama"
    tokenizer = build_tiny_tokenizer(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), **TINY_LLM_FIELDS)
    LlamaForCausalLM(config).save_pretrained(out)
    return out
