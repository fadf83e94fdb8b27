"""vLLM's multimodal processor for M3: our preprocessing, and one placeholder per visual token at the budget.

vLLM asks the processor, per request, for the pixel tensors of each image and for the number of
placeholder tokens each image takes in the prompt. Both are ours: pixels come from
`llava.mm_utils.process_images` (pad to square with the processor's mean colour, or anyres crops), and
the count is what the splice of our own model inserts at the request's `matryoshka_vis_token_scale`
(`count_visual_tokens`, the function our model counts with). So are the prompt ids: the checkpoint's
tokenizer as `load_tokenizer` opens it, chunk by chunk between images (`llava.vllm_plugin.prompt`).
The budget also travels with each image to the model as a field of its own, so images of requests
with different budgets batch together, and since vLLM keys its multimodal and prefix caches on the
processor arguments, an image at one budget never reuses another budget's entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature, CLIPImageProcessor, CLIPVisionConfig, PreTrainedTokenizerBase
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.exceptions import VLLMValidationError
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, ImageSize, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    ProcessorInputs,
    PromptReplacement,
    PromptUpdate,
)

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.mm_utils import process_images
from llava.model.anyres import parse_grid_pinpoints
from llava.model.builder import load_image_processor
from llava.model.config import LlavaMultimodalConfig
from llava.model.matryoshka import validate_scale
from llava.model.multimodal_encoder.clip_encoder import load_clip_vision_config
from llava.model.tokenizer import load_tokenizer
from llava.model.visual_tokens import count_visual_tokens
from llava.vllm_plugin.prompt import m3_prompt_ids

SCALE_KWARG = "matryoshka_vis_token_scale"


def clip_vision_config(config: LlavaMultimodalConfig) -> CLIPVisionConfig:
    """The tower's config: stored in the checkpoint when we saved it, else read from `mm_vision_tower`."""
    if config.mm_vision_config is not None:
        return CLIPVisionConfig(**{k: v for k, v in config.mm_vision_config.items() if k != "model_type"})
    return load_clip_vision_config(config.mm_vision_tower)


def checkpoint_default_scale(config: LlavaMultimodalConfig, grid_side: int) -> int:
    """The budget of a request that names none (and no server-wide default was set): the checkpoint's."""
    return config.default_scale_for(grid_side)


def image_placeholder_id(tokenizer: Any) -> int:
    """The in-vocabulary token id that stands for each visual token in vLLM's prompt.

    vLLM rejects prompt ids outside the vocabulary, and the placeholder's own embedding is never
    used (the visual tokens replace it), so a token that tokenizing text never yields serves: padding,
    else `<unk>` (which byte-fallback tokenizers never yield either).
    """
    for token_id in (tokenizer.pad_token_id, tokenizer.unk_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a pad nor an unk token to stand for visual tokens in vLLM")


class M3ProcessingInfo(BaseProcessingInfo):
    """What the processor needs to know about an M3 checkpoint: grid, crop size, budgets, token counts."""

    def get_hf_config(self) -> LlavaMultimodalConfig:
        config = self.ctx.get_hf_config()
        if not isinstance(config, LlavaMultimodalConfig):
            raise TypeError(f"the M3 vLLM plugin serves LLaVA/M3 checkpoints, got a {type(config).__name__}")
        return config

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {}

    @cached_property
    def vision_config(self) -> CLIPVisionConfig:
        return clip_vision_config(self.get_hf_config())

    @cached_property
    def image_processor(self) -> CLIPImageProcessor:
        return load_image_processor(self.ctx.model_config.model, self.get_hf_config())

    @property
    def crop_size(self) -> int:
        return self.vision_config.image_size

    @property
    def grid_side(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @cached_property
    def prompt_tokenizer(self) -> PreTrainedTokenizerBase:
        """The checkpoint's tokenizer as `load_tokenizer` opens it: the ids the checkpoint was trained on.

        vLLM's own (`get_tokenizer()`, transformers 5 as it stands) reads sentencepiece Llama tokenizers
        differently (see llava/model/tokenizer.py); it still tokenizes the text first, and detokenizes.
        """
        config = self.ctx.model_config
        return load_tokenizer(config.tokenizer, revision=config.tokenizer_revision)

    @cached_property
    def placeholder_id(self) -> int:
        return image_placeholder_id(self.prompt_tokenizer)

    def resolve_scale(self, request_kwargs: Mapping[str, object]) -> int:
        """The validated budget of a request: its own, else the server's `--mm-processor-kwargs`, else the checkpoint's."""
        unknown = sorted(set(request_kwargs) - {SCALE_KWARG})
        if unknown:
            raise VLLMValidationError(
                f"unknown mm_processor_kwargs {unknown} for an M3 checkpoint; the only one is {SCALE_KWARG!r}",
                parameter="mm_processor_kwargs",
            )
        merged = self.ctx.get_merged_mm_kwargs(request_kwargs)
        scale = merged.get(SCALE_KWARG)
        if scale is None:
            return checkpoint_default_scale(self.get_hf_config(), self.grid_side)
        try:
            return validate_scale(scale, self.grid_side)
        except (TypeError, ValueError) as err:
            raise VLLMValidationError(str(err), parameter=f"mm_processor_kwargs.{SCALE_KWARG}", value=scale) from err

    def num_image_tokens(self, scale: int, image_size: tuple[int, int]) -> int:
        """Visual tokens of one (width, height) image at `scale`: our model's own count."""
        return count_visual_tokens(self.get_hf_config(), scale, self.grid_side, self.crop_size, image_size)

    def get_image_size_with_most_features(self) -> ImageSize:
        config = self.get_hf_config()
        if not config.is_anyres:
            return ImageSize(self.crop_size, self.crop_size)
        full = self.grid_side**2
        sizes = parse_grid_pinpoints(config.image_grid_pinpoints, self.crop_size)
        width, height = max(sizes, key=lambda size: self.num_image_tokens(full, size))
        return ImageSize(width, height)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        size = self.get_image_size_with_most_features()
        return {"image": self.num_image_tokens(self.grid_side**2, (size.width, size.height))}


class M3DummyInputsBuilder(BaseDummyInputsBuilder[M3ProcessingInfo]):
    """Inputs for vLLM's memory profiling: the largest images, at the full budget (see `get_dummy_inputs`)."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return DEFAULT_IMAGE_TOKEN * mm_counts.get("image", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        size = self.info.get_image_size_with_most_features()
        images = self._get_dummy_images(
            width=size.width,
            height=size.height,
            num_images=mm_counts.get("image", 0),
            overrides=mm_options.get("image"),
        )
        return {"image": images}


class M3MultiModalProcessor(BaseMultiModalProcessor[M3ProcessingInfo]):
    """Pixels by our preprocessing; `num_visual_tokens` placeholders per image at the request's budget."""

    def get_dummy_inputs(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> ProcessorInputs:
        # Profile at the full budget whatever the server default, so the encoder cache fits any request. The
        # prompt is the placeholders themselves: a tokenizer that loses `<image>` in text (M3-Shapes' word-level
        # one) would leave the dummy text without a place for the images.
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        return dataclasses.replace(
            inputs,
            prompt=[self.info.placeholder_id] * mm_counts.get("image", 0),
            hf_processor_mm_kwargs={SCALE_KWARG: self.info.grid_side**2},
        )

    def _postprocess_prompt(self, prompt: list[int]) -> list[int]:
        """Token ids as our `tokenizer_image_token` makes them, with one placeholder id per `<image>`.

        vLLM tokenizes a text prompt as one string with its own tokenizer, where `<image>` becomes
        ordinary text tokens that merge with their neighbours; LLaVA tokenizes the text between images
        chunk by chunk with `load_tokenizer`'s tokenizer, and the checkpoint was trained on those ids. So
        the ids are turned back into the text (`llava.vllm_plugin.prompt`) and tokenized our way, which
        needs a tokenizer whose ids keep the text (byte-level BPE, SentencePiece with byte fallback:
        Llama, Vicuna, Mistral, Qwen2). A prompt given as ids that already hold the placeholder
        (`prompt_token_ids` from `tokenizer_image_token(..., image_token_index=<placeholder>)`) is kept as
        it is: the way to serve a tokenizer that loses text, such as M3-Shapes' word-level one.
        """
        placeholder = self.info.placeholder_id
        if placeholder in prompt:
            return prompt
        return m3_prompt_ids(prompt, self.info.get_tokenizer(), self.info.prompt_tokenizer, placeholder)

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        images = [_as_pil(image, i) for i, image in enumerate(hf_data.get("images", []))]
        scale = self.info.resolve_scale(hf_kwargs)
        pixels = process_images(images, self.info.image_processor, self.info.get_hf_config())
        # One (k, 3, H, W) stack per image: k = 1 for pad, 1 + crops for anyres (k differs between images).
        stacks = [p if p.ndim == 4 else p[None] for p in pixels]
        return BatchFeature(
            {
                "pixel_values": stacks,
                "image_sizes": torch.tensor([image.size for image in images], dtype=torch.long).reshape(-1, 2),
                SCALE_KWARG: torch.full((len(images),), scale, dtype=torch.long),
            }
        )

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "pixel_values": MultiModalFieldConfig.batched("image"),
            "image_sizes": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            SCALE_KWARG: MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        placeholder = self.info.placeholder_id
        scale = self.info.resolve_scale(hf_processor_mm_kwargs)

        def replacement(item_idx: int) -> list[int]:
            size = mm_items.get_items("image", ImageProcessorItems).get_image_size(item_idx)
            return [placeholder] * self.info.num_image_tokens(scale, (size.width, size.height))

        return [PromptReplacement(modality="image", target=[placeholder], replacement=replacement)]


def _as_pil(image: object, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise VLLMValidationError(
        f"image {index} is a {type(image).__name__}; the M3 processor takes PIL images (as vLLM's chat API decodes them)",
        parameter="multi_modal_data.image",
    )
