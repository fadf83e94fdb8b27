"""M3 in vLLM: CLIP tower → projector → M3 pooling per image at its budget → (NeXT) anyres merge → LLM.

The module layout follows the checkpoint (`vision_tower`, `mm_projector`, `image_newline`, the language
model), so the original LLaVA/M3 weights load by a prefix rename. The tower and language model are
vLLM's own (tensor-parallel, paged attention); the projector is ours (`build_vision_projector`), and so
are the pooling (`pool_visual_tokens`) and the NeXT merge (`merge_anyres_features`): the same functions
that run in our trainer and engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.clip import CLIPVisionModel
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    get_layer_index,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.model.anyres import merge_anyres_features
from llava.model.config import LlavaMultimodalConfig
from llava.model.cpu_packing import prepare_for_inference
from llava.model.matryoshka import pool_visual_tokens
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.multimodal_projector.builder import build_vision_projector
from llava.vllm_plugin import TEXT_ARCHITECTURES
from llava.vllm_plugin.processor import (
    SCALE_KWARG,
    M3DummyInputsBuilder,
    M3MultiModalProcessor,
    M3ProcessingInfo,
    clip_vision_config,
)

TOWER_PREFIX = "vision_tower."


@MULTIMODAL_REGISTRY.register_processor(M3MultiModalProcessor, info=M3ProcessingInfo, dummy_inputs=M3DummyInputsBuilder)
class M3LlavaForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    """Serves `LlavaLlamaForCausalLM` / `LlavaMistralForCausalLM` / `LlavaQwen2ForCausalLM` checkpoints."""

    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.vision_tower.vision_tower.": TOWER_PREFIX,
            "model.mm_projector.": "mm_projector.",
            "model.image_newline": "image_newline",
            "model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return DEFAULT_IMAGE_TOKEN
        raise ValueError(f"M3 takes images only, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: LlavaMultimodalConfig = vllm_config.model_config.hf_config
        self.config = config
        vision_config = clip_vision_config(config)
        self.crop_size = vision_config.image_size
        with self._mark_tower_model(vllm_config, "image"):
            self.vision_tower = CLIPVisionModel(
                vision_config,
                vllm_config.quant_config,
                num_hidden_layers_override=get_layer_index(
                    config.mm_vision_select_layer, vision_config.num_hidden_layers
                ),
                require_post_norm=False,
                prefix=maybe_prefix(prefix, "vision_tower"),
            )
            self.mm_projector = build_vision_projector(
                config.mm_projector_type, config.mm_hidden_size or vision_config.hidden_size, config.hidden_size
            )
            self.image_newline = (
                nn.Parameter(torch.empty(config.hidden_size)) if config.mm_patch_merge_type == "spatial_unpad" else None
            )
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=[TEXT_ARCHITECTURES[config.architectures[0]]],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One (T_i, C) tensor per image, T_i = `num_visual_tokens` at the image's own budget.

        Every crop of every image in the batch goes through the tower and projector in one call;
        pooling then runs per image, at the budget its request asked for.
        """
        pixel_values = kwargs.get("pixel_values")
        if pixel_values is None:
            return []
        stacks = list(pixel_values) if isinstance(pixel_values, (list, tuple)) else list(pixel_values.unbind(0))
        sizes = torch.as_tensor(kwargs["image_sizes"]).reshape(-1, 2).tolist()
        scales = torch.as_tensor(kwargs[SCALE_KWARG]).reshape(-1).tolist()
        select = "default" if self.config.mm_vision_select_feature == "patch" else "full"
        crops = torch.cat([s if s.ndim == 4 else s[None] for s in stacks])
        # vLLM's engine process profiles the encoder with gradients on; nothing here is ever trained, and the
        # packed projector layers refuse inputs that record a graph.
        with torch.no_grad():
            features = self.mm_projector(
                self.vision_tower(crops.to(self.vision_tower.dtype), feature_select_strategy=select)
            )
        counts = [s.shape[0] if s.ndim == 4 else 1 for s in stacks]
        return [
            self._image_tokens(image_features, int(scale), (int(w), int(h)))
            for image_features, scale, (w, h) in zip(features.split(counts), scales, sizes)
        ]

    def _image_tokens(self, features: torch.Tensor, scale: int, image_size: tuple[int, int]) -> torch.Tensor:
        """(crops, P, C) projected features of one image → its (T, C) visual tokens at `scale` per crop."""
        if self.config.mm_vision_select_feature == "cls_patch":
            pooled = torch.cat([features[:, :1], pool_visual_tokens(features[:, 1:], scale)], dim=1)
        else:
            pooled = pool_visual_tokens(features, scale)
        if not self.config.is_anyres:
            return pooled.flatten(0, 1)
        return merge_anyres_features(
            pooled,
            image_size,
            self.config.image_grid_pinpoints,
            self.crop_size,
            self.config.mm_patch_merge_type,
            self.image_newline,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load the checkpoint's weights; a tower the checkpoint lacks comes from `mm_vision_tower`."""
        seen_tower: list[bool] = []

        def checkpoint_weights() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in self.hf_to_vllm_mapper.apply(weights):
                if name.startswith(TOWER_PREFIX) and not seen_tower:
                    seen_tower.append(True)
                yield name, tensor

        loader = AutoWeightsLoader(self)
        loaded = loader.load_weights(checkpoint_weights())
        if not seen_tower:
            loaded |= loader.load_weights(self._external_tower_weights())
        # vLLM's own linear layers run pre-packed oneDNN weights on the CPU; the projector is ours, so it
        # gets our packing (where it pays; a no-op on GPUs, for other dtypes and for `identity`).
        if any(True for _ in self.mm_projector.parameters()):
            prepare_for_inference(self.mm_projector)
        return loaded

    def _external_tower_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The CLIP weights of `mm_vision_tower` (a local folder or hub id), named as in this module."""
        config = self.config
        tower = CLIPVisionTower(
            config.mm_vision_tower,
            config.mm_vision_select_layer,
            config.mm_vision_select_feature,
            config.mm_vision_config,
        )
        tower.load_pretrained_weights()
        for name, tensor in tower.vision_tower.state_dict().items():  # vision_model.*
            yield TOWER_PREFIX + name, tensor
