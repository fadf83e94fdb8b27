"""LLaVA/M3 on Llama (Vicuna): the class named in the released checkpoints' `architectures`."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from llava.model.config import LlavaMultimodalConfig
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaConfig(LlavaMultimodalConfig, LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]


class LlavaLlamaForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaConfig
    base_model_class = LlavaLlamaModel
    _no_split_modules = LlavaLlamaModel._no_split_modules
