"""The CLIP vision tower: pixels in, the patch features of one hidden layer out."""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.placement import gathered, to_weight

logger = logging.getLogger(__name__)


class CLIPVisionTower(nn.Module):
    """Wraps `CLIPVisionModel` under the attribute name the released checkpoints use.

    Weights live at `vision_tower.vision_model.*` (the layout of CLIP checkpoints before
    transformers 5 flattened `CLIPVisionModel`), so inside a LLaVA model they are named
    `model.vision_tower.vision_tower.vision_model.*` as in LLaVA/M3 checkpoints. The module is
    built from a config only; `load_pretrained_weights` fills it from `mm_vision_tower` when the
    checkpoint does not carry the tower itself.
    """

    def __init__(self, tower_name: str, select_layer: int, select_feature: str, vision_config: dict | None = None):
        super().__init__()
        self.tower_name = tower_name
        self.select_layer = select_layer
        self.select_feature = select_feature
        if vision_config is not None:
            config = CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
        else:
            config = load_clip_vision_config(tower_name)
        self.vision_tower = nn.Module()
        self.vision_tower.vision_model = CLIPVisionModel(config)

    @property
    def clip(self) -> CLIPVisionModel:
        return self.vision_tower.vision_model

    @property
    def config(self) -> CLIPVisionConfig:
        return self.clip.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels → (N, P, C) features of `select_layer` (P = patches, +1 for cls_patch).

        Only the layers up to `select_layer` run (LLaVA reads the second-to-last, so the last
        layer's work would be thrown away). Gradients flow when the caller wants them: freezing is
        done with `requires_grad`, never with `no_grad` here (the original's `no_grad` made
        `unfreeze_mm_vision_tower` a no-op).
        """
        clip = self.clip
        hidden = clip.pre_layrnorm(clip.embeddings(to_weight(pixel_values, clip.embeddings.patch_embedding.weight)))
        for layer in clip.encoder.layers[: self.layers_needed]:
            hidden = layer(hidden, None)
        if self.select_feature == "patch":
            return hidden[:, 1:]
        return hidden

    @property
    def layers_needed(self) -> int:
        """Encoder layers before `select_layer` (hidden state 0 is the embeddings, as in transformers)."""
        num_layers = len(self.clip.encoder.layers)
        index = self.select_layer if self.select_layer >= 0 else num_layers + 1 + self.select_layer
        if not 0 <= index <= num_layers:
            raise ValueError(f"mm_vision_select_layer={self.select_layer} is outside a {num_layers}-layer tower")
        return index

    def load_pretrained_weights(self) -> None:
        """Copy the weights of the CLIP model at `tower_name` into this tower, in its dtype and device.

        Written in place, parameter by parameter, so it works the same on a model partitioned by
        ZeRO-3 (each rank loads the CLIP checkpoint and writes its full parameters) and on one
        placed by a device map.
        """
        pretrained = CLIPVisionModel.from_pretrained(self.tower_name, dtype=torch.float32)
        with gathered(pretrained.parameters()), gathered(self.clip.parameters()), torch.no_grad():
            source = pretrained.state_dict()
            target = self.clip.state_dict(keep_vars=True)
            missing = sorted(set(target) - set(source))
            if missing:
                raise ValueError(
                    f"vision tower {self.tower_name!r} lacks weights {missing[:5]} ({len(missing)} in all)"
                )
            for name, tensor in target.items():
                if tensor.device.type == "meta":
                    raise ValueError(f"vision tower weight {name} is offloaded; load the checkpoint with its tower")
                tensor.copy_(source[name])
        logger.info("loaded vision tower weights from %s", self.tower_name)


def load_clip_vision_config(tower_name: str) -> CLIPVisionConfig:
    """Read a CLIP vision config from a local folder or hub id (a full CLIP config works too)."""
    try:
        return CLIPVisionConfig.from_pretrained(tower_name)
    except OSError as err:
        raise OSError(
            f"cannot read the vision tower config from mm_vision_tower={tower_name!r}: {err}. "
            "Point mm_vision_tower at a local CLIP folder, or use a checkpoint that stores mm_vision_config."
        ) from err
