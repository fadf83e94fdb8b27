"""Merge a LoRA run (adapter + non_lora_trainables.bin) into its base: a full LLaVA/M3 checkpoint.

    python scripts/merge_lora_weights.py --model-path checkpoints/llava-v1.5-7b-m3-lora \\
        --model-base liuhaotian/llava-v1.5-7b --save-model-path checkpoints/llava-v1.5-7b-m3-merged

The result loads with `load_pretrained_model(path, None, name)`, like a released checkpoint.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from llava.mm_utils import get_model_name_from_path
from llava.model.builder import load_pretrained_model


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", required=True, help="the LoRA run's output folder")
    parser.add_argument("--model-base", required=True, help="the model the LoRA run started from")
    parser.add_argument("--save-model-path", required=True, help="where to write the merged checkpoint")
    parser.add_argument(
        "--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="dtype of the merged weights"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path,
        args.model_base,
        get_model_name_from_path(args.model_path),
        device="cpu",
        dtype=getattr(torch, args.dtype),
    )
    model.save_pretrained(args.save_model_path)
    tokenizer.save_pretrained(args.save_model_path)
    if image_processor is not None:
        image_processor.save_pretrained(args.save_model_path)


if __name__ == "__main__":
    main()
