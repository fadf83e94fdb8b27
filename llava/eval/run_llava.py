"""Answer one query about one or more images: `python -m llava.eval.run_llava` / `eval_model(args)`.

Kept compatible with LLaVA's run_llava: `eval_model` takes any object with the LLaVA attribute
names (`model_path`, `model_base`, `query`, `image_file`, `conv_mode`, `sep`, `temperature`,
`top_p`, `num_beams`, `max_new_tokens`), plus M3's `matryoshka_vis_token_scale`.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields
from typing import Any

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template, select_conv_mode
from llava.mm_utils import (
    format_image_query,
    get_model_name_from_path,
    load_image,
    process_images,
    tokenizer_image_token,
)
from llava.model.builder import load_pretrained_model
from llava.model.cpu_packing import prepare_for_inference

logger = logging.getLogger(__name__)


@dataclass
class RunArgs:
    """The settings of one run; `from_object` fills what a LLaVA-style args object leaves out."""

    model_path: str
    query: str
    image_file: str | None = None
    model_base: str | None = None
    conv_mode: str | None = None
    sep: str = ","
    temperature: float = 0.2
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 512
    matryoshka_vis_token_scale: int | None = None
    device: str | None = None
    load_8bit: bool = False
    load_4bit: bool = False

    @classmethod
    def from_object(cls, args: Any) -> RunArgs:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**values)


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def eval_model(args: Any) -> str:
    """Load the model, answer `args.query` about `args.image_file`, print and return the answer."""
    run = RunArgs.from_object(args)
    device = run.device or default_device()
    model_name = get_model_name_from_path(run.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        run.model_path, run.model_base, model_name, load_8bit=run.load_8bit, load_4bit=run.load_4bit, device=device
    )
    prepare_for_inference(model)
    image_files = [f for f in run.image_file.split(run.sep)] if run.image_file else []
    images = [load_image(f) for f in image_files]
    query = format_image_query(run.query, len(images), model.config.mm_use_im_start_end) if images else run.query

    conv_mode = run.conv_mode or select_conv_mode(model_name, model.config.conv_template)
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")

    pixels = None
    if images:
        pixels = process_images(images, image_processor, model.config)
        pixels = (
            pixels.to(model.device, model.dtype)
            if isinstance(pixels, torch.Tensor)
            else [p.to(model.device, model.dtype) for p in pixels]
        )
    output_ids = model.generate(
        input_ids[None].to(model.device),
        images=pixels,
        image_sizes=[image.size for image in images],
        matryoshka_vis_token_scale=run.matryoshka_vis_token_scale,
        do_sample=run.temperature > 0,
        temperature=run.temperature if run.temperature > 0 else None,
        top_p=run.top_p,
        num_beams=run.num_beams,
        max_new_tokens=run.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        use_cache=True,
    )
    answer = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    print(answer)
    return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Ask an M3 model about one or more images.")
    parser.add_argument("--model-path", "--model_path", dest="model_path", required=True)
    parser.add_argument("--model-base", "--model_base", dest="model_base", default=None)
    parser.add_argument("--image-file", "--image_file", dest="image_file", default=None)
    parser.add_argument("--query", required=True)
    parser.add_argument("--conv-mode", "--conv_mode", dest="conv_mode", default=None)
    parser.add_argument("--sep", default=",", help="separator between several --image-file paths")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None)
    parser.add_argument("--num_beams", "--num-beams", dest="num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int, default=512)
    parser.add_argument(
        "--matryoshka_vis_token_scale",
        "--matryoshka-vis-token-scale",
        dest="matryoshka_vis_token_scale",
        type=int,
        default=None,
        help="visual tokens per image (per crop for anyres): 576, 144, 36, 9 or 1; default: the checkpoint's",
    )
    parser.add_argument("--device", default=None, help="cuda, cpu or mps (default: the best available)")
    parser.add_argument("--load-8bit", "--load_8bit", dest="load_8bit", action="store_true")
    parser.add_argument("--load-4bit", "--load_4bit", dest="load_4bit", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> str:
    logging.basicConfig(level=logging.WARNING)
    return eval_model(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
