"""LLaVA/M3 on Qwen2 (chatml/qwen templates)."""

from __future__ import annotations

from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from llava.model.config import LlavaMultimodalConfig
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaQwen2Config(LlavaMultimodalConfig, Qwen2Config):
    model_type = "llava_qwen2"


class LlavaQwen2Model(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwen2Config
    _no_split_modules = ["Qwen2DecoderLayer", "CLIPEncoderLayer"]


class LlavaQwen2ForCausalLM(LlavaMetaForCausalLM, Qwen2ForCausalLM):
    config_class = LlavaQwen2Config
    base_model_class = LlavaQwen2Model
    _no_split_modules = LlavaQwen2Model._no_split_modules
