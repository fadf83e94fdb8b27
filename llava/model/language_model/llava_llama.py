"""LLaVA/M3 on Llama (Vicuna): the class named in the released checkpoints' `architectures`."""

from __future__ import annotations

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from llava.model.config import LlavaMultimodalConfig
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaConfig(LlavaMultimodalConfig, LlamaConfig):
    model_type = "llava_llama"

    def __post_init__(self, **kwargs):
        self.validate_multimodal()
        super().__post_init__(**kwargs)


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]


class LlavaLlamaForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaConfig
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]

    def __init__(self, config: LlavaConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
