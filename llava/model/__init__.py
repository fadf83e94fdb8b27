"""LLaVA/M3 models. Importing this package registers the `llava_*` model types with transformers'
Auto classes, so `AutoConfig` / `AutoModelForCausalLM` open the released checkpoints."""

from transformers import AutoConfig, AutoModelForCausalLM

from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM, LlavaLlamaModel
from llava.model.language_model.llava_mistral import LlavaMistralConfig, LlavaMistralForCausalLM
from llava.model.language_model.llava_qwen import LlavaQwen2Config, LlavaQwen2ForCausalLM
from llava.model.llava_arch import EncodedImages, MatryoshkaCausalLMOutput

LlavaLlamaConfig = LlavaConfig

LLAVA_MODEL_CLASSES = {
    "llava_llama": (LlavaConfig, LlavaLlamaForCausalLM),
    "llava_mistral": (LlavaMistralConfig, LlavaMistralForCausalLM),
    "llava_qwen2": (LlavaQwen2Config, LlavaQwen2ForCausalLM),
}
# The language-model families a LLaVA model is built on: a plain model of each (the start of projector
# pretraining, or the text half of transformers' LLaVA) becomes the LLaVA model type beside it.
PLAIN_LLM_FAMILIES = {"llama": "llava_llama", "mistral": "llava_mistral", "qwen2": "llava_qwen2"}

for _model_type, (_config_cls, _model_cls) in LLAVA_MODEL_CLASSES.items():
    AutoConfig.register(_model_type, _config_cls, exist_ok=True)
    AutoModelForCausalLM.register(_config_cls, _model_cls, exist_ok=True)

__all__ = [
    "EncodedImages",
    "LLAVA_MODEL_CLASSES",
    "LlavaConfig",
    "LlavaLlamaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaLlamaModel",
    "LlavaMistralConfig",
    "LlavaMistralForCausalLM",
    "LlavaQwen2Config",
    "LlavaQwen2ForCausalLM",
    "MatryoshkaCausalLMOutput",
    "PLAIN_LLM_FAMILIES",
]
