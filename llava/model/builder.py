"""`load_pretrained_model`: the one loading path of LLaVA/M3 checkpoints, for inference, training and merging.

What a checkpoint is comes from its config's fields, never from its folder name:
- ours: `model_type` llava_llama / llava_mistral / llava_qwen2, the format of the released M3 checkpoints;
- the original LLaVA code's: `model_type: "llava"` with `mm_vision_tower` (liuhaotian/llava-v1.5-7b,
  llava-v1.6-vicuna-7b): the same weight names, read into our classes and saved back as ours;
- transformers' own LLaVA / LLaVA-NeXT (the llava-hf layout, `text_config` / `vision_config`): config
  and weight names mapped by `llava.model.convert_hf`;
- a plain Llama / Mistral / Qwen2 language model (the start of projector pretraining).
Any other `model_type` is refused by name; `llava` is never registered with transformers' Auto classes.

Inference (`load_pretrained_model`) and training (`llava.train.model_setup`) share every step: the config
(`read_checkpoint_config`), quantisation (`quantization_config`), the weights with each missing or
unexpected tensor named (`load_llava_weights`: the tower from `mm_vision_tower` when the checkpoint leaves
it out, a projector file, a LoRA run's other trainables), the image tokens (`add_image_tokens`) and the
image processor (`load_image_processor`). Weights written after `from_pretrained` go through
`placement.gathered`, so the same code runs under DeepSpeed ZeRO-3. The model comes back plain: the
inference entry points then call `prepare_for_inference` (CPU weight packing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, CLIPImageProcessor, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import is_flash_attn_2_available

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.model import LLAVA_MODEL_CLASSES, PLAIN_LLM_FAMILIES
from llava.model.config import LlavaMultimodalConfig
from llava.model.convert_hf import HF_KEY_MAPPING, HF_LLAVA_MODEL_TYPES, m3_config_from_hf
from llava.model.placement import gathered
from llava.model.tokenizer import load_tokenizer
from llava.optional import optional_dependency

__all__ = [
    "CheckpointConfig",
    "add_image_tokens",
    "available_devices",
    "check_device",
    "context_length",
    "llava_config_from_fields",
    "load_image_processor",
    "load_llava_weights",
    "load_pretrained_model",
    "load_projector_weights",
    "load_tokenizer",
    "load_weight_file",
    "quantization_config",
    "read_checkpoint_config",
]

logger = logging.getLogger(__name__)

# Kept in full precision under bitsandbytes quantisation (as LLaVA does). transformers matches these from the
# start of the module name (or as a suffix), so the multimodal modules need their full path.
QUANT_SKIP_MODULES = ["model.mm_projector", "model.vision_tower", "lm_head"]
TOWER_PREFIX = "model.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."
# What a LLaVA model adds to its language model and a new one starts without (projector pretraining).
FRESH_PREFIXES = (PROJECTOR_PREFIX, "model.image_newline")
# Original LLaVA checkpoints name their class in `architectures`; their model_type is just "llava".
ARCHITECTURE_MODEL_TYPES = {cls.__name__: model_type for model_type, (_, cls) in LLAVA_MODEL_CLASSES.items()}
SHOWN_NAMES = 8


# -- the config: which checkpoint this is -----------------------------------------------------------


@dataclass(frozen=True)
class CheckpointConfig:
    """A checkpoint's config in our classes, and the format its weights are stored in."""

    config: PretrainedConfig
    """Ours (a `LlavaMultimodalConfig`) for every LLaVA format; the language model's own for a plain LLM."""
    format: str
    """"m3" (ours), "llava" (the original LLaVA code), "llava-hf" (transformers' classes) or "plain"."""

    @property
    def is_llava(self) -> bool:
        return self.format != "plain"

    @property
    def key_mapping(self) -> dict[str, str] | None:
        """How this checkpoint's weight names map onto ours (`from_pretrained(key_mapping=...)`)."""
        return HF_KEY_MAPPING if self.format == "llava-hf" else None


def read_checkpoint_config(path_or_id: str | Path, **hub_kwargs: Any) -> CheckpointConfig:
    """The config of a checkpoint folder or hub id, told apart by its fields; `hub_kwargs` e.g. `cache_dir`."""
    fields, _ = PretrainedConfig.get_config_dict(str(path_or_id), **hub_kwargs)
    model_type = fields.get("model_type")
    if model_type in LLAVA_MODEL_CLASSES:
        return CheckpointConfig(LLAVA_MODEL_CLASSES[model_type][0].from_dict(fields), "m3")
    if model_type in HF_LLAVA_MODEL_TYPES and ("text_config" in fields or "vision_config" in fields):
        return CheckpointConfig(m3_config_from_hf(fields, str(path_or_id)), "llava-hf")
    if model_type == "llava" and "mm_vision_tower" in fields:
        return CheckpointConfig(llava_config_from_fields(fields, _original_model_type(fields, path_or_id)), "llava")
    if model_type in PLAIN_LLM_FAMILIES:
        return CheckpointConfig(CONFIG_MAPPING[model_type].from_dict(fields), "plain")
    raise ValueError(
        f"{path_or_id} has model_type={model_type!r}, which M3 does not load. It loads LLaVA/M3 checkpoints "
        f"({', '.join(LLAVA_MODEL_CLASSES)}; the original LLaVA code's 'llava' with mm_vision_tower; transformers' "
        f"{' and '.join(HF_LLAVA_MODEL_TYPES)} with text_config/vision_config) and plain language models "
        f"({', '.join(PLAIN_LLM_FAMILIES)})"
    )


def llava_config_from_fields(fields: dict[str, Any], model_type: str) -> LlavaMultimodalConfig:
    """Our config class for `model_type` from another config's fields (a plain LLM's, the original LLaVA's)."""
    config_cls = LLAVA_MODEL_CLASSES[model_type][0]
    return config_cls.from_dict({k: v for k, v in fields.items() if k not in ("model_type", "architectures")})


def _original_model_type(fields: dict[str, Any], path_or_id: str | Path) -> str:
    """The family of an original-format config: its `architectures` name our class (Llama when absent,
    the only family the original code saved as "llava")."""
    architectures = fields.get("architectures") or ["LlavaLlamaForCausalLM"]
    known = [ARCHITECTURE_MODEL_TYPES[name] for name in architectures if name in ARCHITECTURE_MODEL_TYPES]
    if not known:
        raise ValueError(
            f"{path_or_id} is an original LLaVA checkpoint (model_type 'llava') of architectures {architectures}; "
            f"M3 has {sorted(ARCHITECTURE_MODEL_TYPES)}"
        )
    return known[0]


# -- devices and load options --------------------------------------------------------------------


def available_devices() -> list[str]:
    """The devices torch can use here: "cpu" and each accelerator ("cuda:0", "mps:0", ...)."""
    names = ["cpu"]
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is not None:
        names += [f"{accelerator.type}:{i}" for i in range(torch.accelerator.device_count())]
    return names


def check_device(device: str | int | torch.device) -> None:
    """Raise a ValueError naming the devices that are here when `device` is not one of them.

    Asking for a device that is absent (the default "cuda" on a machine without CUDA, "mps" off a Mac)
    is an error, never a silent fall-back to the CPU.
    """
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if isinstance(device, int):  # a device-map index: the accelerator of that number
        if accelerator is not None and 0 <= device < torch.accelerator.device_count():
            return
    else:
        try:
            wanted = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device={device!r} is not a device name; the devices here are {', '.join(available_devices())}"
            ) from None
        if wanted.type in ("cpu", "meta"):
            return
        present = accelerator is not None and wanted.type == accelerator.type
        if present and (wanted.index is None or wanted.index < torch.accelerator.device_count()):
            return
    raise ValueError(
        f"device={device!r} is not available on this machine; the devices here are "
        f"{', '.join(available_devices())} (pass one of them, e.g. device='cpu')"
    )


def _placement(device: str, device_map: str | dict | None) -> str | dict | None:
    """The `device_map` for `from_pretrained`: an explicit dict as given, "auto" & co. on CUDA, else all on `device`."""
    if isinstance(device_map, dict):
        for target in device_map.values():
            if target not in ("cpu", "disk"):
                check_device(target)
        return device_map
    check_device(device)
    return device_map if device == "cuda" else {"": device}


def quantization_config(
    bits: int, compute_dtype: torch.dtype, double_quant: bool = True, quant_type: str = "nf4"
) -> BitsAndBytesConfig:
    """bitsandbytes 4- or 8-bit for the language model; tower, projector and LM head stay in `compute_dtype`."""
    if bits not in (4, 8):
        raise ValueError(f"quantisation is 4 or 8 bits, got {bits}")
    with optional_dependency():
        import bitsandbytes  # noqa: F401  (transformers imports it to quantise; fail here, naming the extra)
    return BitsAndBytesConfig(
        load_in_4bit=bits == 4,
        load_in_8bit=bits == 8,
        llm_int8_skip_modules=QUANT_SKIP_MODULES,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_quant_type=quant_type,
    )


def _attention(use_flash_attn: bool) -> str:
    if not use_flash_attn:
        return "sdpa"
    if is_flash_attn_2_available():
        return "flash_attention_2"
    logger.warning("use_flash_attn=True but flash-attn 2 is not installed (or no CUDA device); using SDPA instead")
    return "sdpa"


def context_length(config: PretrainedConfig) -> int:
    """Tokens the language model was built for (visual tokens included): its `max_position_embeddings`."""
    return int(config.max_position_embeddings)


# -- weights ---------------------------------------------------------------------------------------


def _named_list(names: set[str] | list[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f", ... ({len(names)} in all)" if len(names) > SHOWN_NAMES else "")


def _from_pretrained(model_cls: Any, weights_from: str, **load_kwargs: Any) -> tuple[nn.Module, set[str]]:
    """`model_cls.from_pretrained`; an unexpected tensor is an error; returns the model and its missing keys."""
    model, info = model_cls.from_pretrained(weights_from, output_loading_info=True, **load_kwargs)
    if info["unexpected_keys"]:
        raise ValueError(
            f"{weights_from} holds weights that {type(model).__name__} does not have: "
            f"{_named_list(info['unexpected_keys'])}; the checkpoint does not match its config.json"
        )
    return model, set(info["missing_keys"])


def load_llava_weights(
    model_cls: Any,
    weights_from: str,
    config: LlavaMultimodalConfig,
    *,
    key_mapping: dict[str, str] | None = None,
    projector_file: str | Path | None = None,
    trainables_file: str | Path | None = None,
    fresh_projector: bool = False,
    **load_kwargs: Any,
) -> nn.Module:
    """A LLaVA/M3 model of `config` with every weight accounted for, or a ValueError naming those that are not.

    Sources, later ones winning: the weights at `weights_from` (renamed by `key_mapping`); the tower from
    `config.mm_vision_tower` when they leave it out (frozen towers are not saved); `projector_file`
    (an `mm_projector.bin`); `trainables_file` (a LoRA run's `non_lora_trainables.bin`). With
    `fresh_projector`, the projector and `image_newline` may come from none of them and keep their
    random initialisation, as projector pretraining from a plain language model needs.
    `load_kwargs` go to `from_pretrained` (dtype, device_map, quantization_config, ...).
    """
    model, missing = _from_pretrained(model_cls, weights_from, config=config, key_mapping=key_mapping, **load_kwargs)
    if model.get_vision_tower() is not None and any(key.startswith(TOWER_PREFIX) for key in missing):
        model.get_vision_tower().load_pretrained_weights()
        missing = {key for key in missing if not key.startswith(TOWER_PREFIX)}
    if projector_file is not None:
        missing -= load_projector_weights(model, projector_file)
    if trainables_file is not None:
        missing -= load_weight_file(model, trainables_file)
    fresh = {key for key in missing if key.startswith(FRESH_PREFIXES)} if fresh_projector else set()
    if missing - fresh:
        raise ValueError(
            f"{weights_from} lacks weights the model needs: {_named_list(missing - fresh)}{_hint(missing)}"
        )
    if fresh:
        logger.info("starting %s from random values (fresh_projector)", _named_list(fresh))
    return model


def _hint(missing: set[str]) -> str:
    if not all(key.startswith(FRESH_PREFIXES) for key in missing):
        return ""
    return (
        ". A projector-only checkpoint (mm_projector.bin) loads over its base language model (model_base); "
        "to start the projector from random values, as projector pretraining does, pass fresh_projector=True"
    )


def _model_key(key: str) -> str:
    """A side file's key as the model names it: without PEFT/DeepSpeed wrappers, under `model.`."""
    for prefix in ("base_model.model.", "module."):
        key = key.removeprefix(prefix)
    return "model." + key if key.startswith(("mm_projector.", "vision_tower.", "image_newline")) else key


def load_weight_file(model: nn.Module, file: str | Path, prefix: str = "") -> set[str]:
    """Write the tensors of a LLaVA side file (under `prefix`) into `model`, ZeRO-3 safe; returns their names.

    Side files are pickled state dicts (`mm_projector.bin`, `non_lora_trainables.bin`), read tensors-only.
    """
    file = Path(file)
    if not file.exists():
        raise FileNotFoundError(f"expected weights file {file} is missing")
    loaded = torch.load(file, map_location="cpu", weights_only=True)
    state = {_model_key(key): value for key, value in loaded.items() if _model_key(key).startswith(prefix)}
    if not state:
        raise ValueError(f"{file} holds no weights under {prefix!r} (its keys: {_named_list(list(loaded))})")
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    unknown = set(state) - set(own)
    if unknown:
        raise ValueError(f"{file} holds weights this model does not have: {_named_list(unknown)}")
    targets = [own[key] for key in state]
    with gathered(t for t in targets if isinstance(t, nn.Parameter)), torch.no_grad():
        for key, value in state.items():
            if own[key].device.type == "meta":
                raise ValueError(f"{file}: {key} is offloaded by the device map; place it on a device to load it")
            if own[key].shape != value.shape:
                raise ValueError(
                    f"{file}: {key} has shape {tuple(value.shape)}; the model's is {tuple(own[key].shape)}"
                )
            own[key].copy_(value)
    logger.info("loaded %d tensors from %s", len(state), file)
    return set(state)


def load_projector_weights(model: nn.Module, file: str | Path) -> set[str]:
    """The projector of an `mm_projector.bin` (what projector pretraining saves) into `model`, ZeRO-3 safe."""
    return load_weight_file(model, file, PROJECTOR_PREFIX)


def add_image_tokens(tokenizer: Any, model: nn.Module) -> int:
    """Add <im_patch> / <im_start>, <im_end> when the config asks; new embedding rows start at the mean.

    Returns how many tokens were added (0 for a checkpoint whose tokenizer has them already).
    """
    new_tokens = []
    if model.config.mm_use_im_patch_token:
        new_tokens.append(DEFAULT_IMAGE_PATCH_TOKEN)
    if model.config.mm_use_im_start_end:
        new_tokens += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
    added = tokenizer.add_tokens(new_tokens, special_tokens=True) if new_tokens else 0
    if not added:
        return 0
    model.resize_token_embeddings(len(tokenizer))
    embeddings = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    with gathered(embeddings), torch.no_grad():
        for weight in embeddings:
            weight[-added:] = weight[:-added].mean(dim=0, keepdim=True)
    return added


def load_image_processor(model_path: str | Path, config: PretrainedConfig) -> CLIPImageProcessor | None:
    """The checkpoint's own `preprocessor_config.json` if it has one, else the vision tower's (None: no tower)."""
    if config.mm_vision_tower is None:
        return None
    if (Path(model_path) / "preprocessor_config.json").exists():
        return CLIPImageProcessor.from_pretrained(model_path)
    return CLIPImageProcessor.from_pretrained(config.mm_vision_tower)


# -- inference -------------------------------------------------------------------------------------


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
    fresh_projector: bool = False,
    **kwargs: Any,
) -> tuple[Any, nn.Module, Any, int]:
    """Load a checkpoint; returns `(tokenizer, model, image_processor, context_len)`, the model in eval mode.

    Args:
        model_path: checkpoint folder (or hub id) in any format above: full model, LoRA adapter, projector-only.
        model_base: base model for LoRA / projector-only checkpoints, else None.
        model_name: as from `get_model_name_from_path`; kept for LLaVA's signature (the config decides the format).
        load_8bit, load_4bit: quantise the language model with bitsandbytes.
        device_map: accelerate device map for device "cuda" ("auto" spreads over the GPUs); a dict places
            modules explicitly on any device (offload to "disk" with `offload_folder=`).
        device: "cuda", "cuda:N", "cpu" or "mps"; a device that is not there is an error naming those that are.
        use_flash_attn: flash-attention 2 where installed; SDPA otherwise (with a warning).
        torch_compile: compile the vision tower and projector (`compile_vision`); LLaVA models only.
        fresh_projector: let a checkpoint without projector weights load with a random projector.
        kwargs: `torch_dtype=`/`dtype=` override the default (float32 on CPU, float16 elsewhere); anything
            else goes to `from_pretrained`.

    `context_len` is the language model's `max_position_embeddings`. The model is plain: inference entry
    points call `prepare_for_inference(model)` next, which packs its CPU weights where that pays.
    """
    if "cpu_weight_prepack" in kwargs:
        raise TypeError(
            "load_pretrained_model returns a plain model and no longer packs weights; call "
            "llava.model.cpu_packing.prepare_for_inference(model, cpu_weight_prepack=...) after loading"
        )
    if load_8bit and load_4bit:
        raise ValueError("choose one of load_8bit and load_4bit")
    bits = 8 if load_8bit else 4 if load_4bit else None
    load_kwargs = _load_kwargs(device, device_map, bits, use_flash_attn, kwargs)
    source = read_checkpoint_config(model_path)
    tokenizer = load_tokenizer(model_base or model_path)
    if not source.is_llava:
        if torch_compile:
            raise ValueError(f"torch_compile compiles the vision tower; {model_path} is not a LLaVA checkpoint")
        model, missing = _from_pretrained(AutoModelForCausalLM, model_base or model_path, **load_kwargs)
        if missing:
            raise ValueError(f"{model_base or model_path} lacks weights the model needs: {_named_list(missing)}")
        return tokenizer, model.eval(), None, context_length(model.config)
    model = _load_llava(model_path, model_base, source, fresh_projector, load_kwargs)
    add_image_tokens(tokenizer, model)
    image_processor = load_image_processor(model_path, model.config)
    model.eval()
    if torch_compile:
        model.compile_vision()
    return tokenizer, model, image_processor, context_length(model.config)


def _load_kwargs(
    device: str, device_map: str | dict | None, bits: int | None, use_flash_attn: bool, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """`from_pretrained` keywords: dtype (float32 on CPU, float16 elsewhere, unless `kwargs` name one),
    attention, placement and quantisation; the rest of `kwargs` as given."""
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or _default_dtype(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    load_kwargs = {"dtype": dtype, "attn_implementation": _attention(use_flash_attn), **kwargs}
    load_kwargs["device_map"] = _placement(device, device_map)
    if bits is not None:
        load_kwargs["quantization_config"] = quantization_config(bits, dtype)
    return load_kwargs


def _load_llava(
    model_path: str, model_base: str | None, source: CheckpointConfig, fresh_projector: bool, load_kwargs: dict
) -> nn.Module:
    """A full checkpoint; a LoRA adapter (merged) or a projector-only checkpoint over `model_base`."""
    config = source.config
    model_cls = LLAVA_MODEL_CLASSES[config.model_type][1]
    if model_base is None:
        return load_llava_weights(
            model_cls,
            model_path,
            config,
            key_mapping=source.key_mapping,
            fresh_projector=fresh_projector,
            **load_kwargs,
        )
    path = Path(model_path)
    lora = (path / "adapter_config.json").exists()
    model = load_llava_weights(
        model_cls,
        model_base,
        config,
        key_mapping=read_checkpoint_config(model_base).key_mapping,
        # A LoRA run's other trained weights, or (pretraining stage) the projector alone over the base LLM.
        trainables_file=path / "non_lora_trainables.bin" if lora else None,
        projector_file=None if lora else path / "mm_projector.bin",
        fresh_projector=fresh_projector,
        **load_kwargs,
    )
    if not lora:
        return model
    with optional_dependency():
        from peft import PeftModel

    logger.info("merging LoRA weights from %s", model_path)
    return PeftModel.from_pretrained(model, model_path).merge_and_unload()


def _default_dtype(device: str) -> torch.dtype:
    return torch.float32 if device == "cpu" else torch.float16
