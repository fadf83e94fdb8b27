"""Inference on CPU: linear layers with their weights pre-packed once for oneDNN.

A float32 `nn.Linear` on CPU calls MKL's GEMM, which packs its operands on every call; with few rows
that cost is not amortised. On the development machine an 8-row and a 41-row product with the same
1536×4096 weights took the same time, and a 41-row one ran at about two thirds of the 608-row GEMM
rate: the reason the after-tower time of M3's small budgets fell more slowly than the prompt.
oneDNN can pack a weight once into its blocked layout and reuse it (what inductor's CPU
`weight_prepack` does under `freezing`); `pack_linear_weights` swaps each float32 `nn.Linear` of a
model for a `PackedLinear` that does exactly that, in place, for inference only: the packed layer has
no autograd and stays on the CPU. Each packed call costs a fixed ~12 µs more, so it pays for real layer
sizes and slows down tiny ones: `PACK_MIN_WEIGHTS` is where it starts to pay (docs/Performance.md).

Packing is a step of its own, `prepare_for_inference`, that the inference entry points (CLI, worker,
evaluation, benchmarks) take right after `load_pretrained_model`; the loader returns a plain model that
can still be trained, moved and cast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llava.model.placement import is_split

# oneDNN picks its blocking from an expected number of rows; the packed weight works for any number.
_ROWS_HINT = 64

# Smallest weight (in_features × out_features) that `prepare_for_inference` packs by default: a packed call
# has a fixed overhead that smaller layers do not earn back at one row (benchmarks/bench_linear_packing.py;
# the measurements are in docs/Performance.md).
PACK_MIN_WEIGHTS = 512 * 1024


def cpu_packing_available() -> bool:
    """Whether this torch build has the oneDNN ops `PackedLinear` needs."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """`y = x @ W.T + b` with `W` held pre-packed by oneDNN (float32, CPU, no autograd).

    `weight` gives the plain (out_features, in_features) tensor back, and the state dict holds it
    under the `nn.Linear` names, so saving a packed model writes the same checkpoint.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.register_buffer(
            "packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT), persistent=False
        )
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.packed_weight.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(
                "PackedLinear is for inference (prepare_for_inference packed it); it cannot backpropagate. "
                "Train a model as load_pretrained_model returns it, without prepare_for_inference."
            )
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(f"PackedLinear takes float32 CPU inputs; got {x.dtype} on {x.device}")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def _apply(self, fn: Any, recurse: bool = True) -> PackedLinear:
        # `.to()`, `.cuda()`, `.half()` ... reach the packed buffer through here; oneDNN's blocked
        # layout exists only as float32 on the CPU.
        probe = fn(torch.zeros(1))
        if probe.device.type != "cpu" or probe.dtype != torch.float32:
            raise ValueError(
                f"this linear layer's weight is packed for float32 CPU inference (prepare_for_inference), so it "
                f"cannot become {probe.dtype} on {probe.device}; move or cast the model before "
                "prepare_for_inference, or call it with cpu_weight_prepack=False"
            )
        return self

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linear_weights(model: nn.Module, min_weights: int = 0) -> int:
    """Replace every float32 CPU `nn.Linear` in `model` by a `PackedLinear`, in place.

    Only layers with at least `min_weights` weights are packed (`PACK_MIN_WEIGHTS`: where it pays).
    Layers that share their weight with another module (tied embeddings) are left alone, as are
    layers of other types (quantised, LoRA). Returns how many layers were packed. The model is for
    inference from then on (`torch.inference_mode` or `no_grad`).
    """
    if not cpu_packing_available():
        raise RuntimeError("this torch build has no oneDNN (torch.backends.mkldnn); weight packing needs it")
    shared = _shared_weights(model)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
        and module.weight.numel() >= min_weights
        and id(module.weight) not in shared
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, PackedLinear(module))
    return len(targets)


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters reachable under more than one module name (e.g. tied word embeddings)."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def prepare_for_inference(model: nn.Module, cpu_weight_prepack: bool | None = None) -> int:
    """Make a loaded model fast for inference on the CPU, in place; returns how many layers were packed.

    The one place the packing policy lives; every inference entry point (CLI, worker, evaluation,
    benchmarks) calls it right after `load_pretrained_model`, so the loader itself returns a plain,
    trainable model. After it the model is for inference only: packed layers have no autograd and
    refuse to move or be cast. `cpu_weight_prepack`: None packs the layers where it pays
    (`PACK_MIN_WEIGHTS` weights or more) whenever packing applies (float32 weights on the CPU, on one
    device, not quantised, not compiled); True packs every float32 linear layer and is an error where
    packing cannot apply; False packs nothing.
    """
    if cpu_weight_prepack is False:
        return 0
    problems = _packing_problems(model)
    if cpu_weight_prepack and problems:
        raise ValueError("cpu_weight_prepack does not apply with " + ", ".join(problems))
    if problems:
        return 0
    return pack_linear_weights(model, 0 if cpu_weight_prepack else PACK_MIN_WEIGHTS)


def _packing_problems(model: nn.Module) -> list[str]:
    """Why packing cannot apply to `model` (empty when it can)."""
    problems = []
    param = next(model.parameters())
    if is_split(model):
        problems.append("a model split or offloaded by a device map (it packs a model on the CPU alone)")
    elif param.device.type != "cpu":
        problems.append(f"a model on {param.device} (it packs for the CPU)")
    if param.dtype != torch.float32:
        problems.append(f"dtype={param.dtype} (it packs float32 weights)")
    if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
        problems.append("bitsandbytes quantisation (quantised layers are not nn.Linear)")
    if any(hasattr(module, "_orig_mod") or module.__dict__.get("_compiled_call_impl") for module in model.modules()):
        problems.append("a torch.compile'd module (torch.compile cannot trace oneDNN-packed weights; choose one)")
    if not cpu_packing_available():
        problems.append("a torch build without oneDNN (torch.backends.mkldnn)")
    return problems
