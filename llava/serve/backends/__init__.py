"""Serving backends: the engines a model worker (or the OpenAI-style server) can put behind its routes.

    base.py           `ServingBackend`, the interface the routes use; request checks shared by every engine
    vllm_engine.py    `--backend vllm`: an in-process vLLM engine on the checkpoint (needs vLLM)
    openai_engine.py  `--backend openai`: an engine already running elsewhere, through its OpenAI API
    (`--backend hf`, the default, is `llava.serve.service.ModelService`: our own engine)

Only the backend a command selects is imported: `--backend hf` never imports vLLM.
"""

from __future__ import annotations

import argparse

from llava.serve.backends.base import ServingBackend

# Flags that choose how our own engine loads weights; a vLLM or remote engine loads its own.
_HF_ONLY_FLAGS = {
    "model_base": "--model-base (merge the LoRA or projector into a full checkpoint first)",
    "load_8bit": "--load-8bit",
    "load_4bit": "--load-4bit",
    "use_flash_attn": "--use-flash-attn",
    "torch_compile": "--torch-compile",
    "cpu_weight_prepack": "--cpu-weight-prepack",
}


def backend_from_args(args: argparse.Namespace) -> ServingBackend:
    """The backend `--backend` names, loaded and ready to serve (not yet started)."""
    if args.backend == "hf":
        from llava.serve.service import service_from_args

        return service_from_args(args)
    given = [flag for name, flag in _HF_ONLY_FLAGS.items() if getattr(args, name) not in (None, False)]
    if given:
        raise SystemExit(f"{', '.join(given)}: only for --backend hf; --backend {args.backend} loads no weights here")
    if args.backend == "openai" and args.dtype != "auto":
        raise SystemExit(f"--dtype {args.dtype}: the engine at --engine-url runs in the dtype it was started with")
    if args.backend == "vllm":
        from llava.serve.backends.vllm_engine import VLLMBackend

        return VLLMBackend.from_args(args)
    from llava.serve.backends.openai_engine import OpenAIBackend

    return OpenAIBackend.from_args(args)
