"""LLaVA/M3 on Mistral (e.g. llava-v1.6-mistral-7b)."""

from __future__ import annotations

from transformers import MistralConfig, MistralForCausalLM, MistralModel

from llava.model.config import LlavaMultimodalConfig
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaMistralConfig(LlavaMultimodalConfig, MistralConfig):
    model_type = "llava_mistral"


class LlavaMistralModel(LlavaMetaModel, MistralModel):
    config_class = LlavaMistralConfig
    _no_split_modules = ["MistralDecoderLayer", "CLIPEncoderLayer"]


class LlavaMistralForCausalLM(LlavaMetaForCausalLM, MistralForCausalLM):
    config_class = LlavaMistralConfig
    base_model_class = LlavaMistralModel
    _no_split_modules = LlavaMistralModel._no_split_modules
