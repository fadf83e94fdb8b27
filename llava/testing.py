"""Tiny random LLaVA/M3 checkpoints in the real on-disk format, for tests, benchmarks and demos.

Everything is built offline in well under a second: a CLIP vision tower whose patch grid is 24×24
(as CLIP ViT-L/14 at 336 px, but 48 px images with 2 px patches), a byte-level BPE tokenizer and a
small language model of any family we have (`MODEL_TYPES`: Llama, Mistral, Qwen2). Checkpoints are
written with `save_pretrained`, so loading them exercises the same code as a released checkpoint;
`save_as_original_llava` and `save_as_hf_llava` write the same model in the two other formats M3 loads.
`write_test_video` writes short clips of moving M3-Shapes scenes whose frames carry their own index
(`read_frame_index`), for the video path.
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerFast

from llava.data.shapes import BACKGROUND_COLORS, Scene, Shape, render, shape_side
from llava.model import LLAVA_MODEL_CLASSES
from llava.model.convert_hf import to_hf_llava

MODEL_TYPES = tuple(LLAVA_MODEL_CLASSES)
"""Every language-model family of LLaVA/M3: llava_llama, llava_mistral, llava_qwen2."""

TINY_CORPUS = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions. USER: ASSISTANT: What is in the image? Describe "
    "the picture. There is a red circle, a blue square and a green triangle on a white background. yes no "
    "left right one two three four five six how many colour color shape small large "
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
ANYRES_PINPOINTS = [[96, 48], [48, 96], [96, 96], [144, 48], [48, 144]]


def build_tiny_tokenizer(out_dir: str | Path | None = None, corpus: str = TINY_CORPUS) -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer (BOS added, `</s>` EOS) that can encode any text, byte-level BPE."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([corpus], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=2048,
    )
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_clip(out_dir: str | Path, image_size: int = 48, patch_size: int = 2, seed: int = 0) -> Path:
    """A random CLIP vision tower with a (image_size/patch_size)² grid, saved with its image processor."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    CLIPVisionModel(config).save_pretrained(out_dir)
    tiny_image_processor(image_size).save_pretrained(out_dir)
    return Path(out_dir)


def tiny_image_processor(image_size: int = 48) -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )


# The 2-layer language model every tiny test model shares (special ids: the tiny tokenizer's).
TINY_LLM_FIELDS: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
    tie_word_embeddings=False,
)


def tiny_llava_config(
    vision_tower: str | Path, vocab_size: int = 512, model_type: str = "llava_llama", **overrides: Any
):
    """Config of a 2-layer LLaVA/M3 model; `overrides` set any field (e.g. image_aspect_ratio)."""
    config_cls, _ = LLAVA_MODEL_CLASSES[model_type]
    fields: dict[str, Any] = dict(
        **TINY_LLM_FIELDS,
        vocab_size=vocab_size,
        max_position_embeddings=2048,  # the context the servers count prompts against
        mm_vision_tower=str(vision_tower),
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        image_aspect_ratio="pad",
        mm_patch_merge_type="flat",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
    )
    fields.update(overrides)
    return config_cls(**fields)


def build_tiny_llava(
    out_dir: str | Path,
    vision_tower: str | Path | None = None,
    seed: int = 0,
    save_vision_tower: bool = True,
    model_type: str = "llava_llama",
    **overrides: Any,
) -> Path:
    """Write a complete tiny LLaVA/M3 checkpoint (config, safetensors, tokenizer, image processor).

    `vision_tower` defaults to a tiny CLIP written to `out_dir/../<name>-clip`. With
    `save_vision_tower=False` the tower's weights are left out, as in released checkpoints whose
    tower was frozen; loading then fetches them from `mm_vision_tower`.
    """
    out_dir = Path(out_dir)
    if vision_tower is None:
        vision_tower = build_tiny_clip(out_dir.parent / f"{out_dir.name}-clip", seed=seed)
    tokenizer = build_tiny_tokenizer(out_dir)
    config = tiny_llava_config(vision_tower, len(tokenizer), model_type=model_type, **overrides)
    _, model_cls = LLAVA_MODEL_CLASSES[model_type]
    torch.manual_seed(seed)
    model = model_cls(config)
    model.get_vision_tower().load_pretrained_weights()
    state = model.state_dict()
    if not save_vision_tower:
        state = {k: v for k, v in state.items() if ".vision_tower." not in k}
        model.config.mm_vision_config = None
    model.save_pretrained(out_dir, state_dict=state)
    tiny_image_processor(model.get_vision_tower().image_size).save_pretrained(out_dir)
    return out_dir


def silence_non_text_tokens(lm_head_weight: torch.Tensor, tokenizer: Any) -> None:
    """Zero the output rows (vocab, hidden) of every id that is not text on its own, EOS excepted.

    A random model's answers are otherwise mostly ids its tiny tokenizer decodes to nothing (past its
    vocabulary) or to lone UTF-8 bytes, so nothing streams until the end and engines that decode
    differently show them differently. A zeroed row's logit is 0, below the largest of the other (random)
    logits, so greedy answers are text, as a trained model's are.
    """
    special = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    with torch.no_grad():
        for token in range(lm_head_weight.shape[0]):
            if token == tokenizer.eos_token_id:
                continue
            text = tokenizer.decode([token]) if token < len(tokenizer) else ""
            if token in special or not text.strip() or "\ufffd" in text:
                lm_head_weight[token] = 0


# Fields the original LLaVA code writes into its configs and ours does not.
ORIGINAL_LLAVA_FIELDS: dict[str, Any] = dict(
    use_mm_proj=True, freeze_mm_mlp_adapter=False, mm_projector_lr=None, tune_mm_vision_resampler=False
)


def save_as_original_llava(src: str | Path, dst: str | Path, keep_vision_tower: bool = False) -> Path:
    """Copy an M3 checkpoint as the original LLaVA code saved its checkpoints (liuhaotian/llava-v1.5-7b).

    `config.json` says `model_type: "llava"`, names the tower only by `mm_vision_tower` (no
    `mm_vision_config`) and carries the original's extra fields; the weights keep their names and,
    as in the released LLaVA checkpoints whose tower was frozen, leave the tower out unless
    `keep_vision_tower`.
    """
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(model_type="llava", **ORIGINAL_LLAVA_FIELDS)
    for field in ("mm_vision_config", "conv_template", "tokenizer_padding_side", "tokenizer_model_max_length"):
        config.pop(field, None)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    if not keep_vision_tower:
        state = load_file(dst / "model.safetensors")
        save_file(
            {k: v for k, v in state.items() if ".vision_tower." not in k}, dst / "model.safetensors", {"format": "pt"}
        )
    return dst


def save_as_hf_llava(
    model: Any, tokenizer: Any, image_processor: Any, dst: str | Path, hub_layout: bool = False
) -> Path:
    """Write an M3 model as a transformers LLaVA / LLaVA-NeXT checkpoint (the llava-hf layout).

    Built with transformers' own classes (`convert_hf.to_hf_llava`) and their `save_pretrained`. With
    `hub_layout`, the tower's weights are renamed as the llava-hf checkpoints on the hub store them
    (`vision_tower.vision_model.*`; transformers 5 writes `vision_tower.*`).
    """
    dst = Path(dst)
    to_hf_llava(model, image_token_index=tokenizer.unk_token_id).save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    image_processor.save_pretrained(dst)
    if hub_layout:
        state = load_file(dst / "model.safetensors")
        renamed = {
            k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.") else k: v
            for k, v in state.items()
        }
        save_file(renamed, dst / "model.safetensors", {"format": "pt"})
    return dst


# Shapes of random models for benchmarks: (vision tower, language model) config fields.
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": (
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=48,
            patch_size=2,
        ),
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    ),
    # CLIP-L/14-336 with 4 of its 24 layers, and a ~0.5B Llama (32k vocabulary).
    "small": (
        dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=4,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
        ),
        dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12, vocab_size=32000),
    ),
    # The released models' shapes: CLIP-L/14-336 and Vicuna-7B.
    "7b": (
        dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
        ),
        dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000),
    ),
}


def build_random_llava(
    preset: str = "tiny",
    aspect: str = "pad",
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    model_type: str = "llava_llama",
):
    """A random LLaVA/M3 model of a `PRESETS` shape and a family of `MODEL_TYPES`, built in memory on
    `device` (no files).

    `aspect` "pad" gives a LLaVA-1.5 layout; "anyres" a LLaVA-NeXT one (2×2 grid pinpoints,
    spatial_unpad). Returns the model in eval mode.
    """
    vision, text = PRESETS[preset]
    vision_config = CLIPVisionConfig(projection_dim=vision["hidden_size"], **vision)
    crop = vision["image_size"]
    overrides: dict[str, Any] = dict(mm_vision_config=vision_config.to_dict(), **text)
    overrides.setdefault("vocab_size", 512)
    overrides.setdefault("max_position_embeddings", 4096)  # as the released 7B models
    if aspect == "anyres":
        pinpoints = [[2 * crop, crop], [crop, 2 * crop], [2 * crop, 2 * crop], [3 * crop, crop], [crop, 3 * crop]]
        overrides.update(
            image_aspect_ratio="anyres", image_grid_pinpoints=pinpoints, mm_patch_merge_type="spatial_unpad"
        )
    config = tiny_llava_config("random-clip", model_type=model_type, **overrides)
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LLAVA_MODEL_CLASSES[model_type][1](config)
    finally:
        torch.set_default_dtype(default_dtype)
    return model.eval()


# -- test videos ---------------------------------------------------------------------------------

FRAME_INDEX_BITS = 12
"""Frame indices up to 4095 are drawn in."""
FRAME_INDEX_CELL = 8
"""Side in pixels of one bit's cell: large enough to survive lossy video coding."""


def video_frame(
    index: int, size: tuple[int, int] = (96, 64), background: str = "navy", counter: bool = True
) -> Image.Image:
    """Frame `index` of a test clip: an M3-Shapes scene whose red square slides right as the clip goes on,
    above a row of black (0) and white (1) cells that spell `index` in binary, most significant bit first
    (with `counter` False that row is background too: a plain scene, as the M3-Shapes models know them).
    """
    width, height = size
    if width < FRAME_INDEX_BITS * FRAME_INDEX_CELL or height < 2 * FRAME_INDEX_CELL:
        raise ValueError(f"a test frame needs at least {FRAME_INDEX_BITS * FRAME_INDEX_CELL}x{2 * FRAME_INDEX_CELL} px")
    if not 0 <= index < 2**FRAME_INDEX_BITS:
        raise ValueError(f"frame index {index} does not fit in {FRAME_INDEX_BITS} bits")
    side = height - FRAME_INDEX_CELL
    square = shape_side("large", side)
    x0 = index % (side - square)
    shape = Shape("square", "red", "large", (x0, 2, x0 + square - 1, 2 + square - 1))
    frame = Image.new("RGB", size, BACKGROUND_COLORS[background])
    frame.paste(render(Scene(background, (shape,), side)), (0, 0))
    draw = ImageDraw.Draw(frame)
    for bit in range(FRAME_INDEX_BITS if counter else 0):
        on = index >> (FRAME_INDEX_BITS - 1 - bit) & 1
        x = bit * FRAME_INDEX_CELL
        draw.rectangle((x, side, x + FRAME_INDEX_CELL - 1, height - 1), fill=(255, 255, 255) if on else (0, 0, 0))
    return frame


def read_frame_index(frame: Image.Image) -> int:
    """The index `video_frame` drew into `frame` (read at the cells' centres, so coding noise does not matter)."""
    pixels = np.asarray(frame.convert("L"))
    row = frame.height - FRAME_INDEX_CELL // 2
    bits = [pixels[row, bit * FRAME_INDEX_CELL + FRAME_INDEX_CELL // 2] > 127 for bit in range(FRAME_INDEX_BITS)]
    return int("".join("1" if b else "0" for b in bits), 2)


def write_test_video(
    path: str | Path,
    num_frames: int,
    fps: int | Fraction = 25,
    size: tuple[int, int] = (96, 64),
    codec: str = "libx264",
    keyframe_interval: int = 12,
    background: str = "navy",
    counter: bool = True,
) -> Path:
    """Write `num_frames` frames of `video_frame` as a video (the container from the suffix: .mp4, .avi, .webm, ...).

    Keyframes come every `keyframe_interval` frames exactly, so a test knows where a reader can seek;
    libx264 also reorders frames (B-frames), so the decoding order differs from the presentation order,
    as in real videos.
    """
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(keyframe_interval)}
        if codec == "libx264":  # no extra keyframes where the square wraps around (x264 would see a scene cut)
            stream.options = {**stream.options, "crf": "12", "x264-params": "scenecut=0"}
        for index in range(num_frames):
            frame = av.VideoFrame.from_image(video_frame(index, size, background, counter))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
