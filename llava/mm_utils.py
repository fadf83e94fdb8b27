"""Image and prompt preparation shared by inference, serving and evaluation (names kept from the original LLaVA).

Images become pixel tensors either padded to a square with the processor's mean colour ("pad", LLaVA-1.5)
or as a base image plus a grid of crops ("anyres", LLaVA-NeXT). Prompts become token ids with
`IMAGE_TOKEN_INDEX` standing where each image's visual tokens will be spliced in.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import urllib.request
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.model.anyres import parse_grid_pinpoints, select_best_resolution

logger = logging.getLogger(__name__)

_URL_TIMEOUT_S = 30


def load_image(image_file: str) -> Image.Image:
    """Open a local path or an http(s) URL as an RGB image.

    Raises FileNotFoundError for a missing path and ValueError, naming the file and the reason, for
    anything that cannot be read as an image (a corrupt file, an unreachable URL, an HTML page).
    """
    if image_file.startswith(("http://", "https://")):
        try:
            request = urllib.request.Request(image_file, headers={"User-Agent": "llava-m3"})
            with urllib.request.urlopen(request, timeout=_URL_TIMEOUT_S) as response:
                data = response.read()
        except OSError as e:  # URLError, HTTPError and socket timeouts are all OSErrors
            raise ValueError(f"cannot download image {image_file}: {e}") from e
        source: str | BytesIO = BytesIO(data)
    else:
        if not os.path.exists(image_file):
            raise FileNotFoundError(f"image file not found: {image_file}")
        source = image_file
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {image_file}: {e}") from e


def load_image_from_base64(image: str) -> Image.Image:
    """Decode a base64-encoded image (as the web demo sends it to a worker)."""
    return Image.open(BytesIO(base64.b64decode(image)))


def expand2square(pil_img: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Centre the image on a square canvas of its long side filled with `background_color`."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    if width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    result = Image.new(pil_img.mode, (height, height), background_color)
    result.paste(pil_img, ((height - width) // 2, 0))
    return result


def resize_and_pad_image(image: Image.Image, target_resolution: tuple[int, int]) -> Image.Image:
    """Resize to fit (width, height) keeping the aspect ratio, then centre on a black canvas of that size."""
    original_width, original_height = image.size
    target_width, target_height = target_resolution
    scale_w = target_width / original_width
    scale_h = target_height / original_height
    if scale_w < scale_h:
        new_width = target_width
        new_height = min(math.ceil(original_height * scale_w), target_height)
    else:
        new_height = target_height
        new_width = min(math.ceil(original_width * scale_h), target_width)
    resized = image.resize((new_width, new_height))
    new_image = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    new_image.paste(resized, ((target_width - new_width) // 2, (target_height - new_height) // 2))
    return new_image


def divide_to_patches(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Cut the image into `patch_size` squares, row by row (row-major, top-left first)."""
    width, height = image.size
    return [
        image.crop((left, top, left + patch_size, top + patch_size))
        for top in range(0, height, patch_size)
        for left in range(0, width, patch_size)
    ]


def _size_entry(size: Any, key: str) -> int | None:
    """`size[key]` for a plain dict or a transformers `SizeDict` (whose unset keys are None)."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def processor_crop_size(image_processor: Any) -> int:
    """The side of the square the processor outputs (336 for CLIP ViT-L/14-336)."""
    crop = _size_entry(getattr(image_processor, "crop_size", None), "height")
    if crop is None:
        crop = _size_entry(getattr(image_processor, "size", None), "shortest_edge")
    if crop is None:
        raise ValueError(f"cannot tell the crop size of {type(image_processor).__name__}: no crop_size or size")
    return crop


def _pixel_values(image: Image.Image, image_processor: Any) -> torch.Tensor:
    """One image through the processor: (3, H, W)."""
    return image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


def process_anyres_image(
    image: Image.Image, processor: Any, grid_pinpoints: str | Sequence[Sequence[int]]
) -> torch.Tensor:
    """LLaVA-NeXT crops: (1 + n, 3, H, W) with the whole image first, then the n crops row-major.

    The image is resized and padded to the pinpoint resolution (width, height) that keeps most of it,
    then cut into crop-size tiles. The base image is squashed to the processor's input size, as the
    original does (its aspect ratio is recovered later from `image_sizes`).
    """
    crop_size = processor_crop_size(processor)
    best_resolution = select_best_resolution(image.size, parse_grid_pinpoints(grid_pinpoints, crop_size))
    patches = divide_to_patches(resize_and_pad_image(image, best_resolution), crop_size)
    base_side = _size_entry(getattr(processor, "size", None), "shortest_edge") or crop_size
    base_image = image.resize((base_side, base_side))
    return torch.stack([_pixel_values(patch, processor) for patch in [base_image, *patches]], dim=0)


def process_images(
    images: Sequence[Image.Image], image_processor: Any, model_cfg: Any
) -> torch.Tensor | list[torch.Tensor]:
    """Pixel tensors for a batch of images, laid out as the model's `image_aspect_ratio` says.

    `model_cfg` is any object with `image_aspect_ratio` ("pad", "anyres", "anyres_max_N", or None for
    the processor's own resize and centre crop) and, for anyres, `image_grid_pinpoints`.
    Returns (N, 3, H, W) for pad/default, (N, 1 + n, 3, H, W) for anyres when every image has the same
    number of crops, and otherwise a list of per-image (1 + n_i, 3, H, W) tensors.
    """
    # model_cfg may be a model config or an argparse namespace: a missing field means the default.
    image_aspect_ratio = getattr(model_cfg, "image_aspect_ratio", None)
    if image_aspect_ratio == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        new_images = [_pixel_values(expand2square(image, background), image_processor) for image in images]
    elif image_aspect_ratio is not None and image_aspect_ratio.startswith("anyres"):
        grid_pinpoints = model_cfg.image_grid_pinpoints
        new_images = [process_anyres_image(image, image_processor, grid_pinpoints) for image in images]
    else:
        return image_processor(list(images), return_tensors="pt")["pixel_values"]
    if all(x.shape == new_images[0].shape for x in new_images):
        return torch.stack(new_images, dim=0)
    return new_images


def tokenizer_image_token(
    prompt: str,
    tokenizer: Any,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
) -> list[int] | torch.Tensor:
    """Token ids of `prompt` with `image_token_index` where each "<image>" stands.

    Each text chunk is tokenised on its own; a BOS the tokenizer puts at the start of every chunk is
    kept once, at the very start, exactly as the original LLaVA does (the checkpoints were trained so).
    A chunk therefore starts as a text of its own: with a sentencepiece Llama tokenizer " text" after an
    image gets the dummy prefix ("▁▁text"), which `load_tokenizer` makes transformers 5 reproduce.
    """
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]

    input_ids: list[int] = []
    offset = 0
    if prompt_chunks and prompt_chunks[0] and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    # Separators carry `offset` extra copies so that dropping each chunk's first `offset` ids (its BOS)
    # from the separator-and-chunk stream leaves exactly one image id between chunks.
    separator = [image_token_index] * (offset + 1)
    for i, chunk in enumerate(prompt_chunks):
        if i > 0:
            input_ids.extend(separator[offset:])
        input_ids.extend(chunk[offset:])

    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported return_tensors {return_tensors!r}; use 'pt' or None")


def get_model_name_from_path(model_path: str) -> str:
    """The model's name from its path: the last folder, or "<run>_checkpoint-N" for a training checkpoint."""
    parts = model_path.rstrip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]
