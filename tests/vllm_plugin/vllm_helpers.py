"""Shared by the vLLM tests: tiny M3 checkpoints vLLM's CPU kernels accept, and both engines' greedy tokens."""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model import LLAVA_MODEL_CLASSES
from llava.model.builder import load_pretrained_model
from llava.model.tokenizer import load_tokenizer
from llava.testing import ANYRES_PINPOINTS, build_tiny_llava, tiny_image_processor, tiny_llava_config

VLLM_MISSING = "vLLM is not installed here; tests/vllm_plugin runs in .venv-vllm (bash scripts/ci/vllm_env.sh)"
SCALES = [576, 144, 36, 9, 1]
NEW_TOKENS = 12
# vLLM's CPU attention rejects head_dim 16 (the tiny default): 128 / 4 heads = 32. The context is the
# released models' (vLLM refuses a max_model_len above it), room for anyres images at 576 per crop.
VLLM_MODEL_FIELDS = dict(
    hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096
)


def build_pad_checkpoint(root: Path, tower: Path) -> Path:
    return build_tiny_llava(
        root / "llava-v1.5-tiny-pad-m3", vision_tower=tower, matryoshka_vis_token_scale=SCALES, **VLLM_MODEL_FIELDS
    )


def build_wide_projector_checkpoint(root: Path, tower: Path) -> Path:
    """A pad checkpoint whose projector's second layer (1024 × 1024) is over `PACK_MIN_WEIGHTS`, so the
    plugin serves it packed for oneDNN on the CPU; its first (tower width × 1024) stays plain."""
    fields = dict(VLLM_MODEL_FIELDS, hidden_size=1024, num_attention_heads=8)
    return build_tiny_llava(
        root / "llava-v1.5-tiny-wide-m3", vision_tower=tower, matryoshka_vis_token_scale=SCALES, **fields
    )


def build_anyres_checkpoint(root: Path, tower: Path) -> Path:
    return build_tiny_llava(
        root / "anyres-m3",
        vision_tower=tower,
        image_aspect_ratio="anyres",
        image_grid_pinpoints=ANYRES_PINPOINTS,
        mm_patch_merge_type="spatial_unpad",
        **VLLM_MODEL_FIELDS,
    )


def build_checkpoint_with_tokenizer(out_dir: Path, tower: Path, tokenizer_dir: Path) -> Path:
    """A pad checkpoint whose tokenizer files are `tokenizer_dir`'s, copied as they are.

    Copied rather than saved through transformers, so a `tokenizer_config.json` without `legacy` stays
    without it (saving would write the key out). The vocabulary is the tokenizer's.
    """
    vocab_size = len(load_tokenizer(str(tokenizer_dir)))
    config = tiny_llava_config(
        tower, vocab_size, matryoshka_vis_token_scale=SCALES, pad_token_id=None, **VLLM_MODEL_FIELDS
    )
    torch.manual_seed(0)
    model = LLAVA_MODEL_CLASSES["llava_llama"][1](config)
    model.get_vision_tower().load_pretrained_weights()
    model.save_pretrained(out_dir)
    tiny_image_processor(model.get_vision_tower().image_size).save_pretrained(out_dir)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, out_dir / file.name)
    return out_dir


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def chat_prompt(question: str, template: str = "v1") -> str:
    conv = get_conv_template(template)
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{question}")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


class Reference:
    """Our own engine on a checkpoint: `model.generate`, greedy, the ids it returns."""

    def __init__(self, path: Path) -> None:
        self.tokenizer, self.model, self.processor, _ = load_pretrained_model(str(path), None, path.name, device="cpu")

    def prompt_ids(self, prompt: str) -> list[int]:
        return tokenizer_image_token(prompt, self.tokenizer)

    def generate(self, prompt: str, image: Image.Image, scale: int, max_new_tokens: int = NEW_TOKENS) -> list[int]:
        ids = torch.tensor([self.prompt_ids(prompt)])
        pixels = process_images([image], self.processor, self.model.config)
        out = self.model.generate(
            ids,
            images=pixels,
            image_sizes=[image.size],
            matryoshka_vis_token_scale=scale,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return out[0].tolist()


def request(prompt: str, image: Image.Image, scale: int | None) -> dict[str, Any]:
    """One `LLM.generate` input: the text prompt (vLLM tokenizes it), the image, the budget."""
    item: dict[str, Any] = {"prompt": prompt, "multi_modal_data": {"image": image}}
    if scale is not None:
        item["mm_processor_kwargs"] = {"matryoshka_vis_token_scale": scale}
    return item


def assert_same_as_reference(
    llm: Any, reference: Reference, prompt: str, cases: list[tuple[Image.Image, int]]
) -> list[Any]:
    """All (image, budget) requests in one batch; each must equal our engine: prompt ids and greedy ids.

    The prompt ids are our `tokenizer_image_token` ids with the image placeholder repeated
    `num_visual_tokens(budget, image size)` times, so `usage.prompt_tokens` shows the budget.
    """
    outputs = llm.generate([request(prompt, image, scale) for image, scale in cases], greedy())
    ids = reference.prompt_ids(prompt)
    at = ids.index(IMAGE_TOKEN_INDEX)
    placeholder = reference.tokenizer.pad_token_id
    for (image, scale), out in zip(cases, outputs):
        n_visual = reference.model.num_visual_tokens(scale, image.size)
        assert out.prompt_token_ids == ids[:at] + [placeholder] * n_visual + ids[at + 1 :], (image.size, scale)
        assert list(out.outputs[0].token_ids) == reference.generate(prompt, image, scale), (image.size, scale)
    return outputs


def token_request(reference: Reference, prompt: str, image: Image.Image, scale: int) -> dict[str, Any]:
    """A request given as our ids, the image placeholder already in (for tokenizers that lose text)."""
    ids = tokenizer_image_token(prompt, reference.tokenizer, image_token_index=reference.tokenizer.pad_token_id)
    return {
        "prompt_token_ids": ids,
        "multi_modal_data": {"image": image},
        "mm_processor_kwargs": {"matryoshka_vis_token_scale": scale},
    }


def greedy(max_tokens: int = NEW_TOKENS) -> Any:
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


@contextmanager
def engine(path: Path, **kwargs: Any) -> Iterator[Any]:
    """An in-process vLLM engine on `path` (float32, eager: the checks compare tokens, not speed)."""
    vllm = pytest.importorskip("vllm", reason=VLLM_MISSING)
    settings: dict[str, Any] = dict(dtype="float32", enforce_eager=True, seed=0, max_model_len=4096)
    settings.update(kwargs)
    llm = vllm.LLM(model=str(path), **settings)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
