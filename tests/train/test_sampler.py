"""`--group_by_modality_length`: one modality per megabatch, similar lengths together, reproducible order."""

from __future__ import annotations

import torch

from llava.train.sampler import ModalityLengthGroupedSampler, length_grouped_indices, split_to_even_chunks

# 10 image samples (positive) and 7 text-only ones (negative), lengths all different.
LENGTHS = [600 + 10 * i for i in range(10)] + [-(20 + 5 * i) for i in range(7)]


def test_every_index_once():
    order = list(ModalityLengthGroupedSampler(LENGTHS, batch_size=2, world_size=2, seed=0))
    assert sorted(order) == list(range(len(LENGTHS)))


def test_megabatches_hold_one_modality_except_the_leftover():
    batch_size, world_size = 2, 2
    order = list(ModalityLengthGroupedSampler(LENGTHS, batch_size, world_size, seed=3))
    megabatch = batch_size * world_size
    # 10 image samples make 2 full megabatches, 7 text-only make 1: 3 pure megabatches, then the leftover.
    pure = [order[i : i + megabatch] for i in range(0, 3 * megabatch, megabatch)]
    for chunk in pure:
        signs = {LENGTHS[i] > 0 for i in chunk}
        assert len(signs) == 1, chunk
    assert sorted(order[3 * megabatch :]) == order[3 * megabatch :]  # the mixed leftover, sorted, last


def test_same_seed_and_epoch_same_order_new_epoch_new_order():
    sampler = ModalityLengthGroupedSampler(LENGTHS, batch_size=2, world_size=2, seed=7)
    first = list(sampler)
    assert list(ModalityLengthGroupedSampler(LENGTHS, batch_size=2, world_size=2, seed=7)) == first
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_length_grouping_puts_the_longest_first_in_each_megabatch():
    lengths = [5, 50, 10, 40, 20, 30, 1, 60]
    order = length_grouped_indices(lengths, batch_size=4, world_size=1, generator=torch.Generator().manual_seed(0))
    for start in (0, 4):
        chunk = [lengths[i] for i in order[start : start + 4]]
        assert chunk == sorted(chunk, reverse=True)


def test_even_chunks_balance_total_length():
    lengths = [100, 90, 10, 5]
    chunks = split_to_even_chunks([0, 1, 2, 3], lengths, num_chunks=2)
    assert sorted(len(c) for c in chunks) == [2, 2]
    assert sorted(sum(lengths[i] for i in c) for c in chunks) == [100, 105]
