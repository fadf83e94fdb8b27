"""Build the model to train: its start point, image tokens, which weights train, LoRA / QLoRA.

Two start points, as in LLaVA/M3:
- a LLaVA/M3 checkpoint (how M3 was trained: finetune llava-v1.5-7b on all budgets at once), ours or
  the original LLaVA code's (`model_type: "llava"`), saved as ours; its architecture comes from its
  config, flags may only change the data layout;
- a plain Llama / Mistral / Qwen2 model plus `--vision_tower`: tower, projector (and NeXT's
  `image_newline`) are added, the tower's weights come from `--vision_tower`, the projector's from
  `--pretrain_mm_mlp_adapter` when given (else it starts from random values).

Loading is `llava.model.builder`'s, the same as for inference: every weight is accounted for, and
under DeepSpeed ZeRO-3 (where `from_pretrained` partitions the parameters as it builds the model) the
weights written afterwards (tower, projector, new token rows) are gathered on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from llava.model import LLAVA_MODEL_CLASSES, PLAIN_LLM_FAMILIES
from llava.model.builder import (
    CheckpointConfig,
    add_image_tokens,
    llava_config_from_fields,
    load_llava_weights,
    quantization_config,
    read_checkpoint_config,
)

# Re-exported for train.py and the trainer, which load through this module.
from llava.model.builder import load_image_processor as load_image_processor
from llava.model.builder import load_projector_weights as load_projector_weights
from llava.model.matryoshka import parse_scales
from llava.model.placement import gathered as gathered
from llava.model.tokenizer import load_tokenizer as load_checkpoint_tokenizer
from llava.optional import optional_dependency
from llava.train.arguments import ModelArguments, TrainingArguments

logger = logging.getLogger(__name__)

# Flags that would change the shape of a LLaVA checkpoint's weights: they must match it.
ARCHITECTURE_FLAGS = ("mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature")
# Flags that only change how data is laid out: they override the checkpoint's value.
LAYOUT_FLAGS = (
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "mm_patch_merge_type",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
)
MULTIMODAL_MODULES = ("mm_projector", "vision_tower", "image_newline")


def compute_dtype(args: TrainingArguments) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


# -- config --------------------------------------------------------------------------------------


def read_start_point(model_args: ModelArguments, training_args: TrainingArguments) -> CheckpointConfig:
    """The start checkpoint's config; transformers' LLaVA layout (llava-hf) is for inference only."""
    source = read_checkpoint_config(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    if source.format == "llava-hf":
        raise ValueError(
            f"{model_args.model_name_or_path} is in transformers' LLaVA layout (llava-hf), which M3 loads for "
            "inference; to train from it, save it in the M3 format first: load_pretrained_model(path, None, name) "
            "and save_pretrained the model, tokenizer and image processor"
        )
    return source


def build_config(model_args: ModelArguments, training_args: TrainingArguments, source: CheckpointConfig) -> Any:
    """The LLaVA config of the model to train, with the training-time fields set and validated."""
    if source.is_llava:
        config = source.config
        for name in ARCHITECTURE_FLAGS:
            value = getattr(model_args, name)
            if value is not None and value != getattr(config, name):
                raise ValueError(
                    f"--{name} {value!r} differs from the checkpoint's {getattr(config, name)!r}; a LLaVA "
                    f"checkpoint's architecture cannot be changed by a flag (drop --{name} to keep the checkpoint's)"
                )
        if model_args.vision_tower is not None:
            config.mm_vision_tower = model_args.vision_tower
    else:
        config = llava_config_from_fields(source.config.to_dict(), PLAIN_LLM_FAMILIES[source.config.model_type])
        config.mm_vision_tower = model_args.vision_tower
        for name in ARCHITECTURE_FLAGS:
            if getattr(model_args, name) is not None:
                setattr(config, name, getattr(model_args, name))
    for name in LAYOUT_FLAGS:
        if getattr(model_args, name) is not None:
            setattr(config, name, getattr(model_args, name))
    if model_args.matryoshka_vis_token_scale is not None:
        scales = parse_scales(model_args.matryoshka_vis_token_scale)
        config.matryoshka_train_scales = scales  # a list, even of one: what training cycles through
    if model_args.matryoshka_scale_weights is not None:
        config.matryoshka_scale_weights = [float(w) for w in model_args.matryoshka_scale_weights.split(",")]
    config.unfreeze_mm_vision_tower = model_args.unfreeze_mm_vision_tower
    config.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    config.tokenizer_model_max_length = training_args.model_max_length
    config.tokenizer_padding_side = "right"
    config.conv_template = model_args.version
    config.use_cache = False
    config.validate_multimodal()
    return config


# -- tokenizer -----------------------------------------------------------------------------------


def load_tokenizer(model_args: ModelArguments, training_args: TrainingArguments) -> Any:
    tokenizer = load_checkpoint_tokenizer(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
    )
    if tokenizer.pad_token is None:
        # As LLaVA v1 does; the collator builds the attention mask from lengths, so a shared id is harmless.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


# -- trainability --------------------------------------------------------------------------------


def set_trainable(model: Any, model_args: ModelArguments, lora: bool) -> None:
    """Which weights train: language model (unless frozen or LoRA), projector, newline, tower (if unfrozen)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not lora:
        core.requires_grad_(not (model_args.freeze_backbone or model_args.tune_mm_mlp_adapter))
    inner = core.get_model()
    if inner.mm_projector is not None:
        inner.mm_projector.requires_grad_(not model_args.freeze_mm_mlp_adapter)
    if inner.image_newline is not None:
        inner.image_newline.requires_grad_(not model_args.tune_mm_mlp_adapter)
    if inner.vision_tower is not None:
        inner.vision_tower.requires_grad_(model_args.unfreeze_mm_vision_tower)


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of the language model's linear layers (never the tower, projector or LM head)."""
    names = []
    for name, module in model.named_modules():
        if any(part in name for part in (*MULTIMODAL_MODULES, "lm_head")):
            continue
        if isinstance(module, nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            names.append(name)
    return names


def apply_lora(model: Any, training_args: TrainingArguments) -> Any:
    with optional_dependency():
        from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=lora_target_modules(model),
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


# -- the whole setup -----------------------------------------------------------------------------


def build_model(model_args: ModelArguments, training_args: TrainingArguments, tokenizer: Any) -> Any:
    """The model ready for the Trainer (a `PeftModel` with --lora_enable)."""
    if training_args.bits in (4, 8) and not training_args.lora_enable:
        raise ValueError(f"--bits {training_args.bits} trains through LoRA only; add --lora_enable True")
    if training_args.bits not in (4, 8, 16):
        raise ValueError(f"--bits must be 4, 8 or 16, got {training_args.bits}")
    if model_args.tune_mm_mlp_adapter and training_args.lora_enable:
        raise ValueError("--tune_mm_mlp_adapter trains only the projector; it cannot be combined with --lora_enable")
    source = read_start_point(model_args, training_args)
    config = build_config(model_args, training_args, source)
    if config.mm_vision_tower is None and (model_args.tune_mm_mlp_adapter or model_args.pretrain_mm_mlp_adapter):
        raise ValueError("training the projector needs a vision tower: pass --vision_tower")
    dtype = compute_dtype(training_args)
    load_kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": model_args.attn_implementation}
    if training_args.bits in (4, 8):
        load_kwargs["quantization_config"] = quantization_config(
            training_args.bits, dtype, training_args.double_quant, training_args.quant_type
        )
    model = load_llava_weights(
        LLAVA_MODEL_CLASSES[config.model_type][1],
        model_args.model_name_or_path,
        config,
        projector_file=model_args.pretrain_mm_mlp_adapter,
        # A plain language model has no projector yet: projector pretraining starts it from random values.
        fresh_projector=not source.is_llava,
        cache_dir=training_args.cache_dir,
        **load_kwargs,
    )
    add_image_tokens(tokenizer, model)
    if training_args.bits in (4, 8):
        with optional_dependency():
            from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    if training_args.gradient_checkpointing:
        # Reentrant checkpointing needs inputs that require grad, or frozen embeddings cut the graph.
        model.enable_input_require_grads()
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
    set_trainable(model, model_args, training_args.lora_enable)
    _log_trainable(model)
    return model


def _log_trainable(model: nn.Module) -> None:
    def count(params: Iterable[nn.Parameter]) -> int:
        return sum(getattr(p, "ds_numel", p.numel()) for p in params)

    trainable = count(p for p in model.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d of %d", trainable, count(model.parameters()))
