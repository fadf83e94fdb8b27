"""`load_pretrained_model`: open any LLaVA/M3 checkpoint the way LLaVA users already call it.

Handles full checkpoints, LoRA adapters over a base model (with `non_lora_trainables.bin`),
projector-only checkpoints over a base model, 4/8-bit loading through bitsandbytes, and plain
language models. A checkpoint is recognised as LLaVA from its config's `model_type`, not only
from its folder name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, CLIPImageProcessor
from transformers.utils import is_flash_attn_2_available

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.model import LLAVA_MODEL_CLASSES
from llava.model.cpu_packing import prepare_for_inference
from llava.model.tokenizer import load_tokenizer
from llava.optional import optional_dependency

logger = logging.getLogger(__name__)

# Modules kept in full precision under bitsandbytes quantisation (as LLaVA does).
QUANT_SKIP_MODULES = ["model.mm_projector", "model.vision_tower", "lm_head"]


def load_pretrained_model(
    model_path: str,
    model_base: str | None,
    model_name: str,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict | None = "auto",
    device: str = "cuda",
    use_flash_attn: bool = False,
    torch_compile: bool = False,
    cpu_weight_prepack: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, torch.nn.Module, Any, int]:
    """Load a checkpoint; returns `(tokenizer, model, image_processor, context_len)`.

    Args:
        model_path: checkpoint folder (or hub id): full model, LoRA adapter or projector-only.
        model_base: base language model for LoRA / projector-only checkpoints, else None.
        model_name: as from `get_model_name_from_path`; used only as a fallback hint.
        load_8bit, load_4bit: quantise the language model with bitsandbytes.
        device_map: accelerate device map for "cuda"; other devices load onto `device`.
        device: "cuda", "cpu" or "mps".
        use_flash_attn: flash-attention 2 where installed; SDPA otherwise (with a warning).
        torch_compile: compile the vision tower and projector (`compile_vision`); LLaVA models only.
        cpu_weight_prepack: swap float32 linear layers for ones whose weight oneDNN packs once
            (`llava.model.cpu_packing`): faster CPU inference, most of all for short prompts and
            decode steps; the packed model can no longer be trained, moved off the CPU or cast.
            None (the default) packs the layers where it pays (`PACK_MIN_WEIGHTS` weights or more)
            whenever it applies: float32 on the CPU, not quantised, not `torch_compile`. True packs
            every float32 linear layer and is an error where it cannot apply; False never packs.
            Pass False to train or move the loaded model.
        kwargs: `torch_dtype=`/`dtype=` override the default (float32 on CPU, float16 on GPU);
            anything else goes to `from_pretrained`.
    """
    if load_8bit and load_4bit:
        raise ValueError("choose one of load_8bit and load_4bit")
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or _default_dtype(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    load_kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": _attention(use_flash_attn), **kwargs}
    load_kwargs["device_map"] = device_map if device == "cuda" else {"": device}
    if load_8bit or load_4bit:
        with optional_dependency():
            import bitsandbytes  # noqa: F401  (transformers imports it to quantise; fail here, naming the extra)
        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=load_8bit,
            load_in_4bit=load_4bit,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            llm_int8_skip_modules=QUANT_SKIP_MODULES,
        )

    config = AutoConfig.from_pretrained(model_path)
    is_llava = config.model_type in LLAVA_MODEL_CLASSES
    if not is_llava and "llava" in model_name.lower():
        raise ValueError(
            f"{model_path} is named like a LLaVA model but its config has model_type={config.model_type!r}; "
            f"expected one of {sorted(LLAVA_MODEL_CLASSES)}"
        )
    if not is_llava:
        if torch_compile:
            raise ValueError(f"torch_compile compiles the vision tower; {model_path} is not a LLaVA checkpoint")
        tokenizer = load_tokenizer(model_base or model_path)
        model = AutoModelForCausalLM.from_pretrained(model_base or model_path, **load_kwargs)
        model.eval()
        prepare_for_inference(model, cpu_weight_prepack)
        return tokenizer, model, None, _context_length(model.config)

    model_cls = LLAVA_MODEL_CLASSES[config.model_type][1]
    path = Path(model_path)
    tokenizer = load_tokenizer(model_base or model_path)
    weights_from = model_base or model_path
    model, info = model_cls.from_pretrained(weights_from, config=config, output_loading_info=True, **load_kwargs)
    # Before any adapter is merged: LoRA may also have touched the tower.
    if any(".vision_tower." in key for key in info["missing_keys"]):
        model.get_vision_tower().load_pretrained_weights()
    if model_base is not None and (path / "adapter_config.json").exists():
        _load_extra_weights(model, path / "non_lora_trainables.bin")
        model = _merge_lora(model, model_path)
    elif model_base is not None:
        # Projector-only checkpoint (pretraining stage): base LLM + this folder's mm_projector.bin.
        _load_extra_weights(model, path / "mm_projector.bin")
    _add_image_tokens(tokenizer, model)
    image_processor = _load_image_processor(model_path, model.config.mm_vision_tower)
    model.eval()
    if torch_compile:
        model.compile_vision()
    packed = prepare_for_inference(model, cpu_weight_prepack)
    logger.info("packed %d linear layers for oneDNN (cpu_weight_prepack=%s)", packed, cpu_weight_prepack)
    return tokenizer, model, image_processor, _context_length(model.config)


def _default_dtype(device: str) -> torch.dtype:
    return torch.float32 if device == "cpu" else torch.float16


def _attention(use_flash_attn: bool) -> str:
    if not use_flash_attn:
        return "sdpa"
    if is_flash_attn_2_available():
        return "flash_attention_2"
    logger.warning("use_flash_attn=True but flash-attn 2 is not installed (or no CUDA device); using SDPA instead")
    return "sdpa"


def _context_length(config: Any) -> int:
    return getattr(config, "max_sequence_length", None) or 2048


def _load_state_file(file: Path) -> dict[str, torch.Tensor]:
    """Load a pickled LLaVA weight file safely (tensors only) and strip PEFT/DeepSpeed prefixes."""
    if not file.exists():
        raise FileNotFoundError(f"expected weights file {file} is missing")
    state = torch.load(file, map_location="cpu", weights_only=True)
    cleaned = {}
    for key, value in state.items():
        for prefix in ("base_model.model.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def _load_extra_weights(model: torch.nn.Module, file: Path) -> None:
    """Load a partial state dict (projector, or the non-LoRA trainables) into `model`."""
    state = _load_state_file(file)
    if file.name == "mm_projector.bin" and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ValueError(f"{file} holds weights this model does not have: {unknown[:5]}")
    param = next(model.parameters())
    model.load_state_dict({k: v.to(param.device) for k, v in state.items()}, strict=False)
    logger.info("loaded %d tensors from %s", len(state), file)


def _merge_lora(model: torch.nn.Module, adapter_path: str) -> torch.nn.Module:
    with optional_dependency():
        from peft import PeftModel

    logger.info("merging LoRA weights from %s", adapter_path)
    return PeftModel.from_pretrained(model, adapter_path).merge_and_unload()


def _add_image_tokens(tokenizer: Any, model: torch.nn.Module) -> None:
    """Ensure the tokenizer knows the image marker tokens the checkpoint was trained with."""
    new_tokens = []
    if model.config.mm_use_im_patch_token:
        new_tokens.append(DEFAULT_IMAGE_PATCH_TOKEN)
    if model.config.mm_use_im_start_end:
        new_tokens += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
    if new_tokens and tokenizer.add_tokens(new_tokens, special_tokens=True):
        model.resize_token_embeddings(len(tokenizer))


def _load_image_processor(model_path: str, tower_name: str) -> CLIPImageProcessor:
    """The checkpoint's own preprocessor config if it has one, else the vision tower's."""
    if (Path(model_path) / "preprocessor_config.json").exists():
        return CLIPImageProcessor.from_pretrained(model_path)
    return CLIPImageProcessor.from_pretrained(tower_name)


def read_config_dict(model_path: str | Path) -> dict[str, Any]:
    """The raw `config.json` of a local checkpoint (for callers that need fields before loading)."""
    with open(Path(model_path) / "config.json") as f:
        return json.load(f)
