"""Build the model to train: its start point, image tokens, which weights train, LoRA / QLoRA.

Two start points, as in LLaVA/M3:
- a LLaVA/M3 checkpoint (how M3 was trained: finetune llava-v1.5-7b on all budgets at once);
  its architecture comes from its config, flags may only change the data layout;
- a plain Llama / Mistral / Qwen2 model plus `--vision_tower`: tower, projector (and NeXT's
  `image_newline`) are added, the tower's weights come from `--vision_tower`, the projector's from
  `--pretrain_mm_mlp_adapter` when given.

Under DeepSpeed ZeRO-3, `from_pretrained` partitions the parameters as it builds the model; the
weights loaded afterwards (tower, projector, new token rows) are written inside
`deepspeed.zero.GatheredParameters`, identically on every rank.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, BitsAndBytesConfig, CLIPImageProcessor, CLIPVisionModel
from transformers.integrations import is_deepspeed_zero3_enabled

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.model import LLAVA_MODEL_CLASSES
from llava.model.matryoshka import parse_scales
from llava.model.tokenizer import load_tokenizer as load_checkpoint_tokenizer
from llava.optional import optional_dependency
from llava.train.arguments import ModelArguments, TrainingArguments

logger = logging.getLogger(__name__)

# Plain language models we can start from, by their config's model_type.
PLAIN_LLM_FAMILIES = {"llama": "llava_llama", "mistral": "llava_mistral", "qwen2": "llava_qwen2"}
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
# Kept in full precision under --bits 4/8 (as LLaVA does). transformers matches these from the start
# of the module name (or as a suffix), so the multimodal modules need their full path.
QUANT_SKIP_MODULES = ["model.mm_projector", "model.vision_tower", "lm_head"]
MULTIMODAL_MODULES = ("mm_projector", "vision_tower", "image_newline")


def compute_dtype(args: TrainingArguments) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


@contextlib.contextmanager
def gathered(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Full parameters inside the block under ZeRO-3 (changes made on every rank are kept); no-op otherwise."""
    if not is_deepspeed_zero3_enabled():
        yield
        return
    with optional_dependency():
        import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=0):
        yield


# -- config --------------------------------------------------------------------------------------


def build_config(model_args: ModelArguments, training_args: TrainingArguments) -> Any:
    """The LLaVA config of the model to train, with the training-time fields set and validated."""
    source = AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    if source.model_type in LLAVA_MODEL_CLASSES:
        config = source
        for name in ARCHITECTURE_FLAGS:
            value = getattr(model_args, name)
            if value is not None and value != getattr(config, name):
                raise ValueError(
                    f"--{name} {value!r} differs from the checkpoint's {getattr(config, name)!r}; a LLaVA "
                    f"checkpoint's architecture cannot be changed by a flag (drop --{name} to keep the checkpoint's)"
                )
        if model_args.vision_tower is not None:
            config.mm_vision_tower = model_args.vision_tower
    elif source.model_type in PLAIN_LLM_FAMILIES:
        config_cls = LLAVA_MODEL_CLASSES[PLAIN_LLM_FAMILIES[source.model_type]][0]
        fields = {k: v for k, v in source.to_dict().items() if k not in ("model_type", "architectures")}
        config = config_cls(**fields)
        config.mm_vision_tower = model_args.vision_tower
        for name in ARCHITECTURE_FLAGS:
            if getattr(model_args, name) is not None:
                setattr(config, name, getattr(model_args, name))
    else:
        raise ValueError(
            f"{model_args.model_name_or_path} has model_type={source.model_type!r}; start from a LLaVA checkpoint "
            f"({', '.join(LLAVA_MODEL_CLASSES)}) or a plain language model ({', '.join(PLAIN_LLM_FAMILIES)})"
        )
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


def add_image_tokens(tokenizer: Any, model: Any) -> None:
    """Add <im_patch> / <im_start>, <im_end> when the config asks; new embedding rows start at the mean."""
    new_tokens = []
    if model.config.mm_use_im_patch_token:
        new_tokens.append(DEFAULT_IMAGE_PATCH_TOKEN)
    if model.config.mm_use_im_start_end:
        new_tokens += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
    added = tokenizer.add_tokens(new_tokens, special_tokens=True) if new_tokens else 0
    if not added:
        return
    model.resize_token_embeddings(len(tokenizer))
    embeddings = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    with gathered(embeddings), torch.no_grad():
        for weight in embeddings:
            weight[-added:] = weight[:-added].mean(dim=0, keepdim=True)


# -- weights -------------------------------------------------------------------------------------


def load_vision_tower_weights(model: Any) -> None:
    """Fill the tower from `config.mm_vision_tower` (a CLIP folder or hub id), ZeRO-3 safe."""
    tower = model.get_vision_tower()
    param = next(tower.parameters())
    pretrained = CLIPVisionModel.from_pretrained(tower.tower_name, dtype=param.dtype)
    with gathered(pretrained.parameters()), gathered(tower.parameters()):
        missing, _ = tower.clip.load_state_dict(pretrained.state_dict(), strict=False)
    if missing:
        raise ValueError(f"vision tower {tower.tower_name!r} lacks weights {missing[:5]}")
    logger.info("loaded vision tower weights from %s", tower.tower_name)


def load_projector_weights(model: Any, file: str | Path) -> None:
    """Load an `mm_projector.bin` (keys `[model.]mm_projector.*`, as pretraining saves it), ZeRO-3 safe."""
    state = torch.load(file, map_location="cpu", weights_only=True)
    projector_state = {
        key.split("mm_projector.", 1)[1]: value for key, value in state.items() if "mm_projector." in key
    }
    if not projector_state:
        raise ValueError(f"{file} holds no mm_projector weights (keys: {list(state)[:5]})")
    projector = model.get_model().mm_projector
    with gathered(projector.parameters()):
        projector.load_state_dict(projector_state)
    logger.info("loaded projector weights from %s", file)


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
    config = build_config(model_args, training_args)
    if config.mm_vision_tower is None and (model_args.tune_mm_mlp_adapter or model_args.pretrain_mm_mlp_adapter):
        raise ValueError("training the projector needs a vision tower: pass --vision_tower")
    model_cls = LLAVA_MODEL_CLASSES[config.model_type][1]
    dtype = compute_dtype(training_args)
    load_kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": model_args.attn_implementation}
    if training_args.bits in (4, 8):
        with optional_dependency():
            import bitsandbytes  # noqa: F401  (transformers imports it to quantise; fail here, naming the extra)
        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=training_args.bits == 4,
            load_in_8bit=training_args.bits == 8,
            llm_int8_skip_modules=QUANT_SKIP_MODULES,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=training_args.double_quant,
            bnb_4bit_quant_type=training_args.quant_type,
        )
    model, info = model_cls.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        cache_dir=training_args.cache_dir,
        output_loading_info=True,
        **load_kwargs,
    )
    if model.get_vision_tower() is not None and any(".vision_tower." in k for k in info["missing_keys"]):
        load_vision_tower_weights(model)
    if model_args.pretrain_mm_mlp_adapter:
        load_projector_weights(model, model_args.pretrain_mm_mlp_adapter)
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


def load_image_processor(model_name_or_path: str, config: Any) -> CLIPImageProcessor | None:
    """The checkpoint's preprocessor_config.json when it has one, else the vision tower's."""
    if config.mm_vision_tower is None:
        return None
    if (Path(model_name_or_path) / "preprocessor_config.json").exists():
        return CLIPImageProcessor.from_pretrained(model_name_or_path)
    return CLIPImageProcessor.from_pretrained(config.mm_vision_tower)


def _log_trainable(model: nn.Module) -> None:
    def count(params: Iterable[nn.Parameter]) -> int:
        return sum(getattr(p, "ds_numel", p.numel()) for p in params)

    trainable = count(p for p in model.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d of %d", trainable, count(model.parameters()))
