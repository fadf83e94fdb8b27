"""The multimodal half of LLaVA/M3, mixed into each language-model family.

Data flow: pixels → vision tower → projector (`encode_images`, once per image whatever the
budgets) → M3 pooling per crop → anyres merge (`visual_tokens`) → splice into the token
embeddings (`prepare_multimodal_inputs`) → the language model. `forward` and `generate` take
`matryoshka_vis_token_scale` per call: an int, one int per sample, or None for the checkpoint's default.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.anyres import merge_anyres_features
from llava.model.config import LlavaMultimodalConfig
from llava.model.matryoshka import pool_visual_tokens, validate_scale
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.multimodal_projector.builder import build_vision_projector
from llava.model.placement import first_weight, to_weight
from llava.model.splice import SplicedBatch, check_image_count, count_image_placeholders, splice_visual_tokens
from llava.model.visual_tokens import count_visual_tokens

ImageInput = torch.Tensor | Sequence[torch.Tensor]
ScaleArg = int | Sequence[int] | None


@dataclass
class EncodedImages:
    """Projected features of every crop of every image, before any pooling.

    Produced by `encode_images` and accepted wherever pixel `images` are, so one pass of the
    vision tower can serve every budget (evaluation sweeps, the M3 training objective).
    """

    features: torch.Tensor
    """(total crops, P, C): projector output per crop, P = grid side² (+1 with cls_patch)."""
    crops_per_image: list[int]
    stacked_crops: bool
    """True when each image came as a stack of anyres crops (the NeXT merge applies)."""

    def per_image(self) -> list[torch.Tensor]:
        return list(self.features.split(self.crops_per_image))

    def select(self, indices: Sequence[int]) -> EncodedImages:
        """The images at `indices`, in that order; an index may repeat.

        Lets several prompts about one image (rotated options, several budgets) share one
        encoding: no tower or projector work is repeated, only the features are gathered.
        """
        num_images = len(self.crops_per_image)
        bad = [i for i in indices if not 0 <= i < num_images]
        if bad:
            raise IndexError(f"image indices {bad} out of range for {num_images} encoded images")
        per_image = self.per_image()
        chosen = [per_image[i] for i in indices]
        features = torch.cat(chosen) if chosen else self.features[:0]
        return EncodedImages(features, [self.crops_per_image[i] for i in indices], self.stacked_crops)


@dataclass
class MatryoshkaCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the loss at each budget of the M3 objective."""

    scale_losses: dict[int, torch.Tensor] | None = None


def _init_image_newline(model: nn.Module, module: nn.Module) -> None:
    if isinstance(module, LlavaMetaModel) and module.image_newline is not None:
        init.normal_(module.image_newline, mean=0.0, std=1 / math.sqrt(module.image_newline.shape[0]))


def target_token_loss(
    lm_head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Next-token cross-entropy from (B, T, C) hidden states, projected to the vocabulary only where labelled.

    Equals transformers' causal-LM loss (sum over labelled tokens / `num_items_in_batch`, else the
    mean) without the (B, T, vocab) logits: in the M3 objective every budget would hold its own,
    mostly for visual positions that carry no label.
    """
    targets = labels[:, 1:].to(hidden.device)
    labelled = targets != IGNORE_INDEX
    logits = lm_head(hidden[:, :-1][labelled]).float()
    loss = nn.functional.cross_entropy(logits, targets[labelled], reduction="sum")
    if num_items_in_batch is None:
        return loss / labelled.sum()
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


class LlavaMetaModel:
    """Adds the vision tower, projector and `image_newline` to a language model's base model."""

    vision_tower: CLIPVisionTower | None
    mm_projector: nn.Module | None
    image_newline: nn.Parameter | None

    def __init__(self, config: LlavaMultimodalConfig):
        super().__init__(config)
        self.vision_tower = None
        self.mm_projector = None
        self.image_newline = None
        if config.mm_vision_tower is not None:
            self.init_multimodal_modules(config)

    def init_multimodal_modules(self, config: LlavaMultimodalConfig) -> None:
        """Build tower, projector and newline from the config's `mm_*` fields (weights random)."""
        tower = CLIPVisionTower(
            config.mm_vision_tower,
            config.mm_vision_select_layer,
            config.mm_vision_select_feature,
            config.mm_vision_config,
        )
        # Saved with the checkpoint, so it reloads without the tower's original folder.
        config.mm_vision_config = tower.config.to_dict()
        if config.mm_hidden_size is None:
            config.mm_hidden_size = tower.hidden_size
        self.vision_tower = tower
        self.mm_projector = build_vision_projector(config.mm_projector_type, config.mm_hidden_size, config.hidden_size)
        if config.mm_patch_merge_type == "spatial_unpad":
            self.image_newline = nn.Parameter(torch.empty(config.hidden_size))
            init.normal_(self.image_newline, std=1 / math.sqrt(config.hidden_size))

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        _init_image_newline(self, module)


class LlavaMetaForCausalLM:
    """Multimodal `forward` / `generate` for a `*ForCausalLM` whose `.model` is a `LlavaMetaModel`."""

    config: LlavaMultimodalConfig
    model: LlavaMetaModel
    base_model_class: type[LlavaMetaModel]
    """The family's `LlavaMetaModel` subclass (e.g. `LlavaLlamaModel`), which `.model` is built from."""

    def __init__(self, config: LlavaMultimodalConfig) -> None:
        # Not the language model's own __init__: it would build the plain base model, then ours on top.
        PreTrainedModel.__init__(self, config)
        self.model = self.base_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        _init_image_newline(self, module)

    def get_model(self) -> LlavaMetaModel:
        return self.model

    def get_vision_tower(self) -> CLIPVisionTower | None:
        return self.model.vision_tower

    def compile_vision(self, **compile_kwargs: Any) -> None:
        """Compile the vision tower and projector in place with `torch.compile` (`nn.Module.compile`).

        These run once per image on fixed-size crops, so they compile to one graph per crop count;
        the language model stays eager (its sequence length changes every call and every decode
        step). Weights and state-dict names are untouched, so saving and loading work as before.
        The first call per new input shape pays the compilation (tens of seconds on CPU).
        """
        self._require_tower().compile(**compile_kwargs)
        self.model.mm_projector.compile(**compile_kwargs)

    @property
    def grid_side(self) -> int:
        """Side of the square token grid one crop gives (24 for CLIP ViT-L/14 at 336 px)."""
        tower = self._require_tower()
        return tower.num_patches_per_side

    def _require_tower(self) -> CLIPVisionTower:
        tower = self.get_vision_tower()
        if tower is None:
            raise ValueError("this model has no vision tower (config.mm_vision_tower is None); it cannot take images")
        return tower

    # -- scales -----------------------------------------------------------------------------

    @property
    def default_scale(self) -> int:
        """The budget of a call that names none (`LlavaMultimodalConfig.default_scale_for`), validated."""
        return validate_scale(self.config.default_scale_for(self.grid_side), self.grid_side)

    def resolve_scale(self, scale: int | None) -> int:
        """One validated budget: `scale`, or the checkpoint's default for None.

        Raises a TypeError naming the allowed types for anything but an int or None (text is parsed at
        the command-line or HTTP edge), and a ValueError listing the valid budgets for a wrong int.
        """
        return self.default_scale if scale is None else validate_scale(scale, self.grid_side)

    def resolve_scales(self, scale: ScaleArg, num_samples: int) -> list[int]:
        """One validated budget per sample from a call's `matryoshka_vis_token_scale`: one int (or None)
        for every sample, or a list with exactly one int per sample."""
        if scale is None or (isinstance(scale, numbers.Integral) and not isinstance(scale, bool)):
            return [self.resolve_scale(scale)] * num_samples
        if not isinstance(scale, Sequence) or isinstance(scale, str):
            raise TypeError(
                f"matryoshka_vis_token_scale must be an int, a list of ints (one per sample) or None, got "
                f"{type(scale).__name__} {scale!r}; parse text with llava.model.matryoshka.parse_scales first"
            )
        if len(scale) != num_samples:
            raise ValueError(
                f"matryoshka_vis_token_scale lists {len(scale)} scales {list(scale)} for a batch of {num_samples} "
                "samples; give one int for all or exactly one scale per sample"
            )
        return [validate_scale(v, self.grid_side) for v in scale]

    def num_visual_tokens(self, scale: int, image_size: tuple[int, int] | None = None) -> int:
        """Visual tokens one image costs at `scale`, as the splice will really insert them.

        `image_size` is (width, height) and matters only for anyres checkpoints, where a square
        image on a 2×2 grid with `spatial_unpad` costs s + 2√s·(2√s + 1) (576 → 2928, 9 → 51).
        """
        return count_visual_tokens(self.config, scale, self.grid_side, self._require_tower().image_size, image_size)

    # -- images -----------------------------------------------------------------------------

    def encode_images(self, images: ImageInput | EncodedImages) -> EncodedImages:
        """Run the vision tower and projector once over every crop of every image.

        Args:
            images: (N, 3, H, W) one grid per image; (N, n, 3, H, W) or a list of (n_i, 3, H, W)
                anyres crop stacks (base image first); or a list of (3, H, W).
        """
        if isinstance(images, EncodedImages):
            return images
        tower = self._require_tower()
        if isinstance(images, torch.Tensor):
            if images.ndim == 4:
                crops, counts, stacked = images, [1] * images.shape[0], False
            elif images.ndim == 5:
                crops, counts, stacked = images.flatten(0, 1), [images.shape[1]] * images.shape[0], True
            else:
                raise ValueError(f"images must be (N, 3, H, W) or (N, crops, 3, H, W), got shape {tuple(images.shape)}")
        else:
            stacks = [img if img.ndim == 4 else img[None] for img in images]
            stacked = any(img.ndim == 4 for img in images)
            counts = [s.shape[0] for s in stacks]
            crops = torch.cat(stacks) if stacks else torch.empty(0, 3, tower.image_size, tower.image_size)
        expected = (3, tower.image_size, tower.image_size)
        if crops.shape[0] and tuple(crops.shape[1:]) != expected:
            raise ValueError(
                f"image crops must have shape {expected} for this vision tower, got {tuple(crops.shape[1:])}"
            )
        features = tower(crops)
        # The projector may sit on another device or hold another dtype than the tower (device maps).
        weight = first_weight(self.model.mm_projector)
        features = self.model.mm_projector(features if weight is None else to_weight(features, weight))
        return EncodedImages(features, counts, stacked)

    def visual_tokens(
        self, encoded: EncodedImages, scales: Sequence[int], image_sizes: Sequence[tuple[int, int]] | None
    ) -> list[torch.Tensor]:
        """Pool every crop of image i to `scales[i]` tokens and lay the crops out: (T_i, C) per image."""
        if len(scales) != len(encoded.crops_per_image):
            raise ValueError(f"{len(scales)} scales for {len(encoded.crops_per_image)} images")
        crop_scale = torch.tensor(scales).repeat_interleave(torch.tensor(encoded.crops_per_image))
        has_cls = self.config.mm_vision_select_feature == "cls_patch"
        pooled: list[torch.Tensor | None] = [None] * encoded.features.shape[0]
        distinct = list(dict.fromkeys(scales))
        for scale in distinct:  # one pooling call per distinct budget
            index = (crop_scale == scale).nonzero().flatten()
            # With one budget for the batch, pool the features in place rather than a gathered copy.
            feats = encoded.features if len(distinct) == 1 else encoded.features[index]
            grid = pool_visual_tokens(feats[:, 1:] if has_cls else feats, scale)
            grid = torch.cat([feats[:, :1], grid], dim=1) if has_cls else grid
            for i, g in zip(index.tolist(), grid.unbind(0)):
                pooled[i] = g
        bounds = [0, *itertools.accumulate(encoded.crops_per_image)]
        per_image = [torch.stack(pooled[start:end]) for start, end in itertools.pairwise(bounds)]
        if not (encoded.stacked_crops and self.config.is_anyres):
            return [crops.flatten(0, 1) for crops in per_image]
        if image_sizes is None or len(image_sizes) != len(per_image):
            raise ValueError(
                f"anyres images need image_sizes, one (width, height) per image: got "
                f"{None if image_sizes is None else len(image_sizes)} for {len(per_image)} images"
            )
        tower = self._require_tower()
        newline = self.model.image_newline
        if newline is not None:  # a device map may have placed it apart from the projector
            newline = newline.to(encoded.features.device)
        return [
            merge_anyres_features(
                crops,
                tuple(int(v) for v in size),
                self.config.image_grid_pinpoints,
                tower.image_size,
                self.config.mm_patch_merge_type,
                newline,
            )
            for crops, size in zip(per_image, image_sizes)
        ]

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: ImageInput | EncodedImages | None,
        image_sizes: Sequence[tuple[int, int]] | None,
        scale: ScaleArg,
        padding_side: str | None = None,
    ) -> SplicedBatch:
        """Token ids with `<image>` placeholders → the language model's input embeddings."""
        placeholders = count_image_placeholders(input_ids, attention_mask)
        features: list[torch.Tensor] = []
        if images is not None or sum(placeholders):
            if images is None:
                raise ValueError(f"the prompt has {sum(placeholders)} <image> placeholder(s) but no images were given")
            encoded = self.encode_images(images)
            sample_scales = self.resolve_scales(scale, input_ids.shape[0])
            num_images = len(encoded.crops_per_image)
            check_image_count(placeholders, num_images)
            owner = torch.arange(len(placeholders)).repeat_interleave(torch.tensor(placeholders, dtype=torch.long))
            features = self.visual_tokens(encoded, [sample_scales[i] for i in owner.tolist()], image_sizes)
        # Embedded after the images on purpose: every path (one budget, the M3 loop, a text-only batch
        # after the trainer's idle tower pass) then runs tower → projector → embeddings → layers, the
        # same module order on every rank, which ZeRO-3's collective parameter gathering requires.
        text_embeds = self.get_input_embeddings()(input_ids.clamp(min=0))
        max_length = self.config.tokenizer_model_max_length if labels is not None else None
        return splice_visual_tokens(
            input_ids,
            attention_mask,
            labels,
            text_embeds,
            features,
            padding_side or self.config.tokenizer_padding_side,
            max_length,
        )

    # -- forward / generate -----------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        images: ImageInput | EncodedImages | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        matryoshka_vis_token_scale: ScaleArg = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Language-model forward with images spliced in at `matryoshka_vis_token_scale`.

        In training mode with labels, no per-call scale and a list of scales in the config, the
        loss is the M3 objective (see `matryoshka_forward`). `logits_to_keep` is named here, not
        left in `**kwargs`, because `generate` looks for it in this signature to project only the
        last position to the vocabulary during prefill.
        """
        if inputs_embeds is None and input_ids is not None and self.get_vision_tower() is not None:
            scales = self.config.matryoshka_train_scales
            if self.training and labels is not None and matryoshka_vis_token_scale is None and scales:
                return self.matryoshka_forward(input_ids, attention_mask, labels, images, image_sizes, **kwargs)
            # Decoding steps (a cache is passed) never carry placeholders: skip the device sync.
            first_pass = kwargs.get("cache") is None and kwargs.get("past_key_values") is None
            if images is not None or (first_pass and bool((input_ids == IMAGE_TOKEN_INDEX).any())):
                batch = self.prepare_multimodal_inputs(
                    input_ids, attention_mask, labels, images, image_sizes, matryoshka_vis_token_scale
                )
                input_ids, inputs_embeds, attention_mask, labels = (
                    None,
                    batch.inputs_embeds,
                    batch.attention_mask,
                    batch.labels,
                )
                position_ids = batch.position_ids
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def matryoshka_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        images: ImageInput | EncodedImages | None,
        image_sizes: Sequence[tuple[int, int]] | None,
        scales: Sequence[int] | None = None,
        **kwargs,
    ) -> MatryoshkaCausalLMOutput:
        """The M3 objective: the (weighted) mean over budgets of the language-model loss.

        The vision tower and projector run once; each budget pools that one result. Logits are
        computed only where a label is (`target_token_loss`), so none are returned.
        """
        scales = list(scales or self.config.matryoshka_train_scales or [self.default_scale])
        weights = self.config.matryoshka_scale_weights if scales == self.config.matryoshka_train_scales else None
        weights = [float(w) for w in weights] if weights else [1.0] * len(scales)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        kwargs.pop("logits_to_keep", None)
        encoded = None if images is None else self.encode_images(images)
        losses: dict[int, torch.Tensor] = {}
        for scale in scales:
            batch = self.prepare_multimodal_inputs(input_ids, attention_mask, labels, encoded, image_sizes, scale)
            hidden = self.model(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                **kwargs,
            ).last_hidden_state
            losses[scale] = target_token_loss(self.lm_head, hidden, batch.labels, num_items_in_batch)
        loss = sum(w * losses[s] for s, w in zip(scales, weights)) / sum(weights)
        return MatryoshkaCausalLMOutput(loss=loss, scale_losses=losses)

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: ImageInput | EncodedImages | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        matryoshka_vis_token_scale: ScaleArg = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Generate after the prompt; returns only the new tokens, as LLaVA does.

        `inputs` may be left-padded with an `attention_mask`. The image is encoded once, before
        the first step; later steps reuse the KV cache.
        """
        if "inputs_embeds" in kwargs:
            raise ValueError("pass input_ids (with <image> placeholders) and images, not inputs_embeds")
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if input_ids is None:
            raise ValueError("generate needs input_ids")
        attention_mask = kwargs.pop("attention_mask", None)
        kwargs.pop("position_ids", None)
        if self.get_vision_tower() is None:
            batch = splice_visual_tokens(
                input_ids, attention_mask, None, self.get_input_embeddings()(input_ids), [], "left"
            )
        else:
            batch = self.prepare_multimodal_inputs(
                input_ids, attention_mask, None, images, image_sizes, matryoshka_vis_token_scale, padding_side="left"
            )
        return super().generate(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            **kwargs,
        )
