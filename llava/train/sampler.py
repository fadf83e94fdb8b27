"""`--group_by_modality_length`: batches of one modality and similar length, in a reproducible order.

As in LLaVA, a sample's modality length is positive for samples with images and negative for
text-only ones. Indices are shuffled into megabatches of `world_size × batch_size` (world_size
counts gradient-accumulation steps too, so every optimizer step sees one modality per megabatch);
each megabatch is sorted by length and split into per-device batches of similar token counts.
Unlike the original, every random draw comes from one generator seeded with `seed + epoch`, so
a resumed run sees exactly the order of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Deal `indices` (longest first) into `num_chunks` chunks of equal count and similar total length."""
    if len(indices) % num_chunks != 0:
        return [list(indices[i::num_chunks]) for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0] * num_chunks
    for index in indices:
        shortest = min((c for c in range(num_chunks) if len(chunks[c]) < per_chunk), key=lambda c: totals[c])
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
    return chunks


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """A shuffled order in which each megabatch of `world_size × batch_size` is grouped by length."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = world_size * batch_size
    order: list[int] = []
    for start in range(0, len(indices), megabatch_size):
        megabatch = sorted(indices[start : start + megabatch_size], key=lambda i: lengths[i], reverse=True)
        for chunk in split_to_even_chunks(megabatch, lengths, world_size):
            order.extend(chunk)
    return order


def modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """Like `length_grouped_indices`, but no megabatch mixes image (>0) and text-only (<0) samples.

    The two leftover partial megabatches are merged into one, placed last (as in LLaVA).
    """
    if any(length == 0 for length in lengths):
        raise ValueError("modality lengths must be non-zero: positive for image samples, negative for text-only")
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return length_grouped_indices([abs(x) for x in lengths], batch_size, world_size, generator)
    megabatch_size = world_size * batch_size
    groups = []
    for sign in (1, -1):
        members = [i for i, length in enumerate(lengths) if length * sign > 0]
        member_lengths = [abs(lengths[i]) for i in members]
        shuffled = [members[i] for i in length_grouped_indices(member_lengths, batch_size, world_size, generator)]
        groups.append([shuffled[i : i + megabatch_size] for i in range(0, len(shuffled), megabatch_size)])
    (*image_full, image_last), (*text_full, text_last) = groups
    megabatches = image_full + text_full
    megabatches = [megabatches[i] for i in torch.randperm(len(megabatches), generator=generator).tolist()]
    leftover = sorted(image_last + text_last)
    if leftover:
        megabatches.append(leftover)
    return [i for megabatch in megabatches for i in megabatch]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Sampler over a dataset whose `modality_lengths` are signed token counts (see module docstring)."""

    def __init__(self, modality_lengths: Sequence[int], batch_size: int, world_size: int, seed: int = 0) -> None:
        self.lengths = list(modality_lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer each epoch: a new, reproducible order."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator)
