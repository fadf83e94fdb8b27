"""LLaVA/M3 on Qwen2 (chatml/qwen templates)."""

from __future__ import annotations

from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model
from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel

from llava.model.config import LlavaMultimodalConfig
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaQwen2Config(LlavaMultimodalConfig, Qwen2Config):
    model_type = "llava_qwen2"

    def __post_init__(self, **kwargs):
        self.validate_multimodal()
        super().__post_init__(**kwargs)


class LlavaQwen2Model(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwen2Config
    _no_split_modules = ["Qwen2DecoderLayer", "CLIPEncoderLayer"]


class LlavaQwen2ForCausalLM(LlavaMetaForCausalLM, Qwen2ForCausalLM):
    config_class = LlavaQwen2Config
    _no_split_modules = ["Qwen2DecoderLayer", "CLIPEncoderLayer"]

    def __init__(self, config: LlavaQwen2Config):
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = LlavaQwen2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
