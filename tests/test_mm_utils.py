"""Image preprocessing and prompt tokenisation, with a tiny offline tokenizer and a CLIP processor."""

import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    divide_to_patches,
    expand2square,
    get_model_name_from_path,
    load_image,
    process_anyres_image,
    process_images,
    processor_crop_size,
    resize_and_pad_image,
    tokenizer_image_token,
)
from llava.model.builder import load_tokenizer

# Llama-style sentencepiece tokenizers saved by transformers 4 (see tests/fixtures/make_tokenization_fixture.py).
SENTENCEPIECE_TOKENIZERS = Path(__file__).parent / "fixtures" / "tokenization"
PINPOINTS = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]
WORDS = ["USER:", "ASSISTANT:", "what", "is", "this", "?", "a", "cat", "###"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that, like Llama's, puts <s> in front of every encoded text."""
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_tokenizer_image_token_places_image_ids_with_one_bos(tokenizer):
    bos = tokenizer.bos_token_id
    ids = tokenizer_image_token("USER: <image> what is this ? ASSISTANT:", tokenizer)
    assert ids == [bos, *_ids(tokenizer, "USER:"), IMAGE_TOKEN_INDEX, *_ids(tokenizer, "what is this ? ASSISTANT:")]
    assert ids.count(bos) == 1


def test_tokenizer_image_token_two_images_and_tensor(tokenizer):
    ids = tokenizer_image_token("<image> a <image> cat", tokenizer, return_tensors="pt")
    assert ids.dtype == torch.long
    expected = [
        tokenizer.bos_token_id,
        IMAGE_TOKEN_INDEX,
        *_ids(tokenizer, "a"),
        IMAGE_TOKEN_INDEX,
        *_ids(tokenizer, "cat"),
    ]
    assert ids.tolist() == expected


@pytest.mark.parametrize("variant", ["legacy-true", "legacy-false"])
def test_tokenizer_image_token_keeps_the_dummy_prefix_of_each_chunk(variant):
    """A chunk is tokenised on its own, as the checkpoints were trained: " Describe" after an image keeps
    sentencepiece's "▁" in front of its own space ("▁▁Describe"), whatever `legacy` says."""
    tokenizer = load_tokenizer(str(SENTENCEPIECE_TOKENIZERS / variant))
    ids = tokenizer_image_token("USER: <image> Describe the image. <image>", tokenizer)
    first = tokenizer("USER: ").input_ids
    second = tokenizer(" Describe the image. ", add_special_tokens=False).input_ids
    assert ids == [*first, IMAGE_TOKEN_INDEX, *second, IMAGE_TOKEN_INDEX]
    assert "".join(tokenizer.convert_ids_to_tokens(second)).startswith("▁▁Describe")


def test_crop_size_reads_size_dict(image_processor):
    assert processor_crop_size(image_processor) == 336
    no_crop = types.SimpleNamespace(crop_size=None, size={"shortest_edge": 224})
    assert processor_crop_size(no_crop) == 224


def test_process_images_pad_uses_mean_colour(image_processor):
    wide = Image.new("RGB", (400, 200), (255, 255, 255))
    tall = Image.new("RGB", (100, 300), (255, 255, 255))
    cfg = types.SimpleNamespace(image_aspect_ratio="pad", image_grid_pinpoints=None)
    pixels = process_images([wide, tall], image_processor, cfg)
    assert pixels.shape == (2, 3, 336, 336)
    # The padded band (top rows of the wide image) is the mean colour, which normalises to about 0
    # (int() truncation of mean*255 leaves at most 1/255 / std).
    assert pixels[0, :, :40, :].abs().max() < 0.02
    assert pixels[0, :, 168, :].min() > 1.0  # the white image itself


def test_expand2square_centres_image():
    square = expand2square(Image.new("RGB", (4, 2), (255, 0, 0)), (0, 0, 255))
    assert square.size == (4, 4)
    assert square.getpixel((0, 0)) == (0, 0, 255)
    assert square.getpixel((0, 1)) == (255, 0, 0)


def test_process_images_default_is_processor_resize(image_processor):
    pixels = process_images([Image.new("RGB", (500, 400))], image_processor, types.SimpleNamespace())
    assert pixels.shape == (1, 3, 336, 336)


def test_anyres_wide_image_gives_base_plus_two_crops(image_processor):
    image = Image.new("RGB", (672, 336))
    crops = process_anyres_image(image, image_processor, PINPOINTS)
    assert crops.shape == (3, 3, 336, 336)

    cfg = types.SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=str(PINPOINTS))
    batch = process_images([image, image], image_processor, cfg)
    assert batch.shape == (2, 3, 3, 336, 336)
    cfg.image_aspect_ratio = "anyres_max_9"
    mixed = process_images([image, Image.new("RGB", (500, 500))], image_processor, cfg)
    assert [t.shape[0] for t in mixed] == [3, 5]


def test_anyres_base_image_first_then_crops_row_major(image_processor):
    image = Image.new("RGB", (672, 336), (255, 0, 0))
    image.paste((0, 0, 255), (336, 0, 672, 336))  # right half blue
    crops = process_anyres_image(image, image_processor, PINPOINTS)
    red, blue = crops[1], crops[2]
    assert red[0].mean() > red[2].mean() and blue[2].mean() > blue[0].mean()
    left, right = crops[0][:, :, :100], crops[0][:, :, -100:]  # the whole image squashed: red | blue
    assert left[0].mean() > left[2].mean() and right[2].mean() > right[0].mean()


def test_resize_and_pad_and_divide():
    padded = resize_and_pad_image(Image.new("RGB", (100, 50), (255, 255, 255)), (672, 672))
    assert padded.size == (672, 672)
    assert padded.getpixel((0, 0)) == (0, 0, 0) and padded.getpixel((336, 336)) == (255, 255, 255)
    patches = divide_to_patches(padded, 336)
    assert len(patches) == 4 and all(p.size == (336, 336) for p in patches)


def test_load_image(tmp_path):
    good = tmp_path / "good.png"
    Image.new("L", (5, 5)).save(good)
    assert load_image(str(good)).mode == "RGB"

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        load_image(str(corrupt))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(str(tmp_path / "missing.png"))


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("mucai/llava-v1.5-7b-m3", "llava-v1.5-7b-m3"),
        ("/ckpt/llava-next-vicuna-7b-m3/", "llava-next-vicuna-7b-m3"),
        ("/ckpt/run1/checkpoint-500", "run1_checkpoint-500"),
        ("checkpoint-500", "checkpoint-500"),
    ],
)
def test_get_model_name_from_path(path, name):
    assert get_model_name_from_path(path) == name
