"""Where a model's parameters live when they are not all on one device.

Two cases reach the model code: a model split across devices or offloaded by an accelerate
`device_map` (several GPUs, or layers on disk), and a model whose parameters DeepSpeed ZeRO-3
partitions across processes while it trains. Both are handled here, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled

from llava.optional import optional_dependency


def to_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x` in `weight`'s dtype, on `weight`'s device: what a module holding `weight` can take.

    An offloaded weight sits on the `meta` device until accelerate's hook loads it for the call; the
    hook also moves the call's inputs, so `x` then keeps its device and only takes the dtype.
    """
    device = x.device if weight.device.type == "meta" else weight.device
    return x.to(device=device, dtype=weight.dtype)


def first_weight(module: nn.Module) -> torch.Tensor | None:
    """The first parameter of `module` (None for a module without any, e.g. `nn.Identity`)."""
    return next(module.parameters(), None)


def is_split(model: nn.Module) -> bool:
    """Whether accelerate placed `model` over more than one device or offloaded part of it."""
    placements = set(getattr(model, "hf_device_map", {}).values())
    return len(placements) > 1 or any(p.device.type == "meta" for p in model.parameters())


@contextlib.contextmanager
def gathered(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Full parameters inside the block under ZeRO-3 (changes made on every rank are kept); no-op otherwise.

    Weights written after `from_pretrained` (the tower from `mm_vision_tower`, a projector file, new
    token rows) go through this, so loading is the same code with and without ZeRO-3.
    """
    if not is_deepspeed_zero3_enabled():
        yield
        return
    with optional_dependency():
        import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=0):
        yield
