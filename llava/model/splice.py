"""Splice visual tokens into a batch of token embeddings, vectorised over the whole batch.

Every `IMAGE_TOKEN_INDEX` in `input_ids` is replaced by that image's visual tokens (a different
number per image and per budget); text tokens keep their order. The result is re-padded to the
longest sample on the requested side. No Python loop runs over tokens or images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass
class SplicedBatch:
    """Inputs for the language model after splicing (all (B, T[, C]))."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None


def count_image_placeholders(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[int]:
    """Number of `<image>` placeholders per sample (padding excluded)."""
    is_image = input_ids == IMAGE_TOKEN_INDEX
    if attention_mask is not None:
        is_image &= attention_mask.bool()
    return is_image.sum(dim=1).tolist()


def check_image_count(placeholders: list[int], num_images: int) -> None:
    """Raise a ValueError naming the samples when placeholders and images disagree."""
    total = sum(placeholders)
    if total == num_images:
        return
    detail = ", ".join(f"sample {i}: {n}" for i, n in enumerate(placeholders))
    if num_images < total:
        raise ValueError(
            f"the prompt has {total} <image> placeholder(s) ({detail}) but only {num_images} image(s) were given; "
            "give one image per <image> placeholder"
        )
    raise ValueError(
        f"{num_images} image(s) were given but the prompt has only {total} <image> placeholder(s) ({detail}); "
        "put one <image> in the prompt for each image"
    )


def splice_visual_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    text_embeds: torch.Tensor,
    image_features: list[torch.Tensor],
    padding_side: str = "right",
    max_length: int | None = None,
) -> SplicedBatch:
    """Build the LLM's input embeddings with each image's tokens in place of its placeholder.

    Args:
        input_ids: (B, L) token ids, `IMAGE_TOKEN_INDEX` where an image goes; padding anywhere.
        attention_mask: (B, L) 1 for real tokens (None: all real).
        labels: (B, L) or None; visual positions get `IGNORE_INDEX`.
        text_embeds: (B, L, C) embeddings of `input_ids` (values at placeholders are unused).
        image_features: one (T_i, C) tensor per placeholder, in row-major order over the batch; any
            device and dtype (they are moved to `text_embeds`').
        padding_side: where the output's padding goes ("left" for generation).
        max_length: keep at most the first `max_length` tokens of each sample (None: no limit).

    Returns:
        SplicedBatch with (B, T) masks and (B, T, C) embeddings, T the longest spliced sample.
    """
    batch = input_ids.shape[0]
    # Everything meets where the embeddings are: with a device map the image features come from the
    # projector's device, which need not be the embeddings' one.
    device = text_embeds.device
    input_ids = input_ids.to(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    labels = None if labels is None else labels.to(device)
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_image = (input_ids == IMAGE_TOKEN_INDEX) & real
    check_image_count(is_image.sum(dim=1).tolist(), len(image_features))

    image_lengths = torch.tensor([f.shape[0] for f in image_features], dtype=torch.long, device=device)
    starts, offsets, limit, total = _output_slots(real, is_image, image_lengths, padding_side, max_length)

    embeds = text_embeds.new_zeros(batch, total, text_embeds.shape[-1])
    new_labels = None if labels is None else labels.new_full((batch, total), IGNORE_INDEX)

    text = real & ~is_image & (starts < limit[:, None])
    rows, cols = text.nonzero(as_tuple=True)
    embeds[rows, starts[rows, cols]] = text_embeds[rows, cols]
    if labels is not None:
        new_labels[rows, starts[rows, cols]] = labels[rows, cols]

    if image_features:
        _place_images(embeds, image_features, image_lengths, is_image, starts, limit)

    positions = torch.arange(total, device=device)[None, :]
    mask = (positions >= offsets[:, None]) & (positions < limit[:, None])
    position_ids = (positions - offsets[:, None]).clamp(min=0) * mask
    return SplicedBatch(embeds, mask.long(), position_ids, new_labels)


def _output_slots(
    real: torch.Tensor, is_image: torch.Tensor, image_lengths: torch.Tensor, padding_side: str, max_length: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Where each (B, L) input token's output begins, each sample's padding (B,) and end (B,), and the
    output length.

    Each real token occupies one output slot; each placeholder as many as its image has tokens.
    Samples are cut at `max_length` and padded to the longest on `padding_side`.
    """
    batch, length = real.shape
    widths = real.long()
    if image_lengths.numel():
        widths = widths.masked_scatter(is_image, image_lengths)
    ends = widths.cumsum(dim=1)
    sample_lengths = ends[:, -1] if length else torch.zeros(batch, dtype=torch.long, device=real.device)
    if max_length is not None:
        sample_lengths = sample_lengths.clamp(max=max_length)
    total = int(sample_lengths.max().item()) if batch else 0
    offsets = (total - sample_lengths) if padding_side == "left" else torch.zeros_like(sample_lengths)
    return ends - widths + offsets[:, None], offsets, offsets + sample_lengths, total


def _place_images(
    embeds: torch.Tensor,
    image_features: list[torch.Tensor],
    image_lengths: torch.Tensor,
    is_image: torch.Tensor,
    starts: torch.Tensor,
    limit: torch.Tensor,
) -> None:
    """Write each image's (T_i, C) tokens into `embeds` (B, T, C) from its placeholder's output slot
    (`starts`, (B, L)) on, dropping what falls past its sample's `limit` (B,)."""
    img_rows, img_cols = is_image.nonzero(as_tuple=True)  # row-major: the images' order
    slot_rows = torch.repeat_interleave(img_rows, image_lengths)
    first_slot = torch.repeat_interleave(starts[img_rows, img_cols], image_lengths)
    within = torch.arange(int(image_lengths.sum()), device=embeds.device) - torch.repeat_interleave(
        image_lengths.cumsum(0) - image_lengths, image_lengths
    )
    slots = first_slot + within
    keep = slots < limit[slot_rows]
    values = torch.cat(image_features).to(device=embeds.device, dtype=embeds.dtype)
    embeds[slot_rows[keep], slots[keep]] = values[keep]
