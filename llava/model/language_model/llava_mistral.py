"""LLaVA/M3 on Mistral (e.g. llava-v1.6-mistral-7b)."""

from __future__ import annotations

from torch import nn
from transformers import MistralConfig, MistralForCausalLM, MistralModel
from transformers.models.mistral.modeling_mistral import MistralPreTrainedModel

from llava.model.config import LlavaMultimodalConfig
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaMistralConfig(LlavaMultimodalConfig, MistralConfig):
    model_type = "llava_mistral"

    def __post_init__(self, **kwargs):
        self.validate_multimodal()
        super().__post_init__(**kwargs)


class LlavaMistralModel(LlavaMetaModel, MistralModel):
    config_class = LlavaMistralConfig
    _no_split_modules = ["MistralDecoderLayer", "CLIPEncoderLayer"]


class LlavaMistralForCausalLM(LlavaMetaForCausalLM, MistralForCausalLM):
    config_class = LlavaMistralConfig
    _no_split_modules = ["MistralDecoderLayer", "CLIPEncoderLayer"]

    def __init__(self, config: LlavaMistralConfig):
        MistralPreTrainedModel.__init__(self, config)
        self.model = LlavaMistralModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
