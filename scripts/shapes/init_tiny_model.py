"""Build the untrained starting point of the tiny M3-Shapes model, in the on-disk format users load.

Writes two folders, which `llava.train.train` takes as `--model_name_or_path` and `--vision_tower`:

    OUT/llm    a small Llama (`LlamaForCausalLM`) and a word-level tokenizer whose vocabulary is every
               word of the M3-Shapes questions, answers and scene captions plus the conversation
               template's words
    OUT/clip   a CLIP vision tower with a 24x24 patch grid (96 px images, 4 px patches) and its
               image processor

The tower starts from a hand-designed initialisation instead of pure noise (the "known difficulty" of
issue 4: a randomly initialised tower left the model on the answer-prior plateau). Its patch embedding
carries the mean colour of each patch, and its position embedding carries the patch's row and column
(a few low-frequency sines and cosines), so from step one every visual token says "what colour is here
and where", and training only has to learn what to do with it. All other weights are random (seeded).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from llava.conversation import conv_templates
from llava.data.shapes import WORD_PATTERN, split_words, vocabulary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_conversations import caption_words  # noqa: E402

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
COLOR_CHANNELS = 3
POSITION_FREQUENCIES = (1, 2, 3)


def template_words(template: str) -> list[str]:
    """Every word the conversation template adds around the questions (system prompt, role names)."""
    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], "<image>\nquestion")
    conv.append_message(conv.roles[1], "answer")
    text = conv.get_prompt()
    for special in [*SPECIAL_TOKENS, "<image>"]:
        text = text.replace(special, " ")
    return split_words(text)


def build_tokenizer(template: str) -> PreTrainedTokenizerFast:
    """A Llama-style word-level tokenizer: `<s>` prepended, `</s>` EOS, one id per M3-Shapes word."""
    words = sorted(set(vocabulary()) | set(caption_words()) | set(template_words(template)))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Whitespace first, then the same word/punctuation split as llava.data.shapes.split_words.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN.pattern), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=1024,
    )


def build_llm(vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def position_features(grid: int, num_features: int) -> torch.Tensor:
    """(grid², num_features) sines and cosines of each patch's row and column at low frequencies."""
    coords = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    row, col = torch.meshgrid(coords, coords, indexing="ij")
    feats = []
    for freq in POSITION_FREQUENCIES:
        for axis in (row, col):
            feats += [torch.sin(math.pi * freq * axis), torch.cos(math.pi * freq * axis)]
    out = torch.stack(feats, dim=-1).flatten(0, 1)
    if out.shape[1] < num_features:
        raise ValueError(f"need {out.shape[1]} position channels, tower has {num_features}")
    return out


@torch.no_grad()
def init_tower_embeddings(model: CLIPVisionModel, color_scale: float, position_scale: float) -> None:
    """Patch embedding channels 0-2 = mean R, G, B of the patch; the next channels = row/column features."""
    emb = _embeddings(model)
    patch = emb.patch_embedding.weight  # (D, 3, p, p)
    p = patch.shape[-1]
    for c in range(COLOR_CHANNELS):
        patch[c].zero_()
        patch[c, c] = color_scale / (p * p)
    grid = emb.num_patches_per_side if hasattr(emb, "num_patches_per_side") else int(math.sqrt(emb.num_patches))
    pos = position_features(grid, 2 * 2 * len(POSITION_FREQUENCIES))
    n = pos.shape[1]
    patch[COLOR_CHANNELS : COLOR_CHANNELS + n].zero_()
    table = emb.position_embedding.weight  # (1 + grid², D), row 0 is the class token
    table[1:, COLOR_CHANNELS : COLOR_CHANNELS + n] = position_scale * pos
    table[:, :COLOR_CHANNELS] = 0.0


def _embeddings(model: CLIPVisionModel) -> torch.nn.Module:
    # transformers 5 flattened CLIPVisionModel; older releases nest it under `vision_model`.
    inner = getattr(model, "vision_model", model)
    return inner.embeddings


def build_tower(image_size: int, patch_size: int, hidden: int, layers: int, heads: int) -> CLIPVisionModel:
    config = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden,
    )
    return CLIPVisionModel(config)


def image_processor(image_size: int) -> CLIPImageProcessor:
    # Mean/std 0.5 maps pixels to [-1, 1]; M3-Shapes images are square, so "pad" never pads.
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default="v1", help="conversation template whose words join the vocabulary")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--vision-hidden", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=3)
    parser.add_argument("--vision-heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--color-scale", type=float, default=2.0)
    parser.add_argument("--position-scale", type=float, default=1.0)
    parser.add_argument("--no-hand-init", action="store_true", help="leave the tower fully random (ablation)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.image_size // args.patch_size != 24 or args.image_size % args.patch_size:
        raise ValueError(f"M3 needs a 24x24 grid; {args.image_size} px / {args.patch_size} px patches is not")
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer(args.template)
    llm = build_llm(len(tokenizer), args.hidden, args.layers, args.heads, args.intermediate)
    llm.save_pretrained(args.out / "llm")
    tokenizer.save_pretrained(args.out / "llm")
    tower = build_tower(args.image_size, args.patch_size, args.vision_hidden, args.vision_layers, args.vision_heads)
    if not args.no_hand_init:
        init_tower_embeddings(tower, args.color_scale, args.position_scale)
    tower.save_pretrained(args.out / "clip")
    image_processor(args.image_size).save_pretrained(args.out / "clip")
    n_llm = sum(p.numel() for p in llm.parameters())
    n_tower = sum(p.numel() for p in tower.parameters())
    print(
        f"wrote {args.out}/llm ({n_llm / 1e6:.2f} M params, vocab {len(tokenizer)}) and {args.out}/clip "
        f"({n_tower / 1e6:.2f} M params)"
    )


if __name__ == "__main__":
    main()
