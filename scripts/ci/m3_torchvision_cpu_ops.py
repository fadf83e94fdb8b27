"""Loaded at interpreter start in .venv-vllm only (through a .pth file that scripts/ci/vllm_env.sh writes).

PyPI's torchvision wheel is a CUDA build whose compiled ops cannot load beside the CPU torch, and
`import torchvision` then fails registering fake kernels for `torchvision::nms` and `torchvision::qnms`;
declaring the two schemas first lets it import (vLLM and transformers' image modules import it), while
the compiled ops stay unavailable, which nothing the tests run uses.
"""

import torch

_torchvision_ops = torch.library.Library("torchvision", "DEF")
_torchvision_ops.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_torchvision_ops.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
