"""Prompt building and batched, left-padded answer generation for evaluation.

Shared by the evaluation harness (`llava.eval.harness`) and the lmms-eval plugin, so both ask the
model the same way: the user turn gets LLaVA's image marker, is laid out by a conversation
template, and the answer is cut at the template's stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteriaList

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import SeparatorStyle, get_conv_template
from llava.mm_utils import KeywordsStoppingCriteria, format_image_query, tokenizer_image_token
from llava.model.llava_arch import EncodedImages


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of one run (LLaVA's `--temperature --top_p --num_beams --max_new_tokens`)."""

    temperature: float = 0.2
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 128

    def generate_kwargs(self, max_new_tokens: int | None = None) -> dict[str, Any]:
        """Keyword arguments for `model.generate`; temperature 0 means greedy decoding."""
        sample = self.temperature > 0
        kwargs: dict[str, Any] = {
            "do_sample": sample,
            "num_beams": self.num_beams,
            "max_new_tokens": max_new_tokens or self.max_new_tokens,
            "use_cache": True,
        }
        if sample:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        return kwargs


def build_prompt(conv_mode: str, query: str, num_images: int, mm_use_im_start_end: bool) -> str:
    """The full prompt for one user turn: image markers first (as LLaVA's eval scripts put them), then the template."""
    if num_images:
        query = format_image_query(query, num_images, mm_use_im_start_end)
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def stop_string(conv_mode: str) -> str | None:
    """The text that ends the assistant's turn in this template (LLaVA's `stop_str`)."""
    conv = get_conv_template(conv_mode)
    stop = conv.sep2 if conv.sep_style == SeparatorStyle.TWO else conv.sep
    return stop or None


def tokenize_prompt(prompt: str, tokenizer: Any) -> torch.Tensor:
    """Token ids of a prompt, `IMAGE_TOKEN_INDEX` where each `<image>` stands: (L,)."""
    return tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(sequences: Sequence[torch.Tensor], padding_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors, padded on the left: (ids (B, L), attention mask (B, L))."""
    length = max(seq.shape[0] for seq in sequences)
    ids = torch.full((len(sequences), length), padding_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, length - seq.shape[0] :] = seq
        mask[row, length - seq.shape[0] :] = 1
    return ids, mask


def clean_answer(text: str, stop: str | None) -> str:
    """Strip whitespace and cut at the first stop string (a row of a batch may run past it)."""
    text = text.strip()
    if stop and stop in text:
        text = text[: text.index(stop)]
    return text.strip()


def generate_answers(
    model: Any,
    tokenizer: Any,
    input_ids: Sequence[torch.Tensor],
    images: EncodedImages | None,
    image_sizes: Sequence[tuple[int, int]] | None,
    scale: int | None,
    settings: GenerationSettings,
    stop: str | None,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Answer a batch of prompts in one `generate` call.

    Args:
        input_ids: one (L_i,) tensor per prompt, with `IMAGE_TOKEN_INDEX` placeholders.
        images: the images of the prompts' placeholders, in prompt order (see `EncodedImages.select`).
        image_sizes: (width, height) of each of those images.
        scale: visual tokens per image (per crop for anyres); None for the checkpoint's default.
    """
    ids, mask = left_pad(input_ids, pad_id(tokenizer))
    ids, mask = ids.to(model.device), mask.to(model.device)
    criteria = StoppingCriteriaList()
    if stop is not None and stop != tokenizer.eos_token:  # EOS already ends generation
        criteria.append(KeywordsStoppingCriteria([stop], tokenizer, ids))
    output = model.generate(
        ids,
        attention_mask=mask,
        images=images,
        image_sizes=image_sizes,
        matryoshka_vis_token_scale=scale,
        pad_token_id=pad_id(tokenizer),
        stopping_criteria=criteria,
        **settings.generate_kwargs(max_new_tokens),
    )
    return [clean_answer(text, stop) for text in tokenizer.batch_decode(output, skip_special_tokens=True)]
