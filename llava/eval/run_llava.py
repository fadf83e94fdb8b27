"""Answer one query about one or more images or a video: `python -m llava.eval.run_llava` / `eval_model(args)`.

Kept compatible with LLaVA's run_llava: `eval_model` takes any object with the LLaVA attribute
names (`model_path`, `model_base`, `query`, `image_file`, `conv_mode`, `sep`, `temperature`,
`top_p`, `num_beams`, `max_new_tokens`), plus M3's `matryoshka_vis_token_scale`: a budget, or "auto" for the
checkpoint's calibrated policy (`llava.adaptive`), which picks the fewest visual tokens it is sure of; the
budget that answered is then reported on stderr. `video_file` with `num_frames` may stand instead of
`image_file`: the model sees a video as one image, IG-VLM's grid of `num_frames` of its frames.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, fields
from typing import Any

from llava.adaptive import answer_adaptive, resolve_budget
from llava.generation import (
    Generator,
    PromptBatch,
    SamplingParams,
    add_scale_argument,
    default_device,
    parse_scale_text,
)
from llava.mm_utils import get_model_name_from_path, load_image
from llava.model.builder import load_pretrained_model
from llava.model.cpu_packing import prepare_for_inference
from llava.scale_policy import AutoScale, ScalePolicy
from llava.video import DEFAULT_NUM_FRAMES, add_num_frames_argument, video_to_grid

logger = logging.getLogger(__name__)


@dataclass
class RunArgs:
    """The settings of one run; `from_object` fills what a LLaVA-style args object leaves out."""

    model_path: str
    query: str
    image_file: str | None = None
    video_file: str | None = None
    num_frames: int = DEFAULT_NUM_FRAMES
    model_base: str | None = None
    conv_mode: str | None = None
    sep: str = ","
    temperature: float = 0.2
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 512
    matryoshka_vis_token_scale: int | AutoScale | None = None
    """A budget, `AUTO` (or the text "auto" of a LLaVA-style args object), or None for the checkpoint's default."""
    device: str | None = None
    load_8bit: bool = False
    load_4bit: bool = False

    @classmethod
    def from_object(cls, args: Any) -> RunArgs:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        if isinstance(values.get("matryoshka_vis_token_scale"), str):
            values["matryoshka_vis_token_scale"] = parse_scale_text(values["matryoshka_vis_token_scale"])
        return cls(**values)


def eval_model(args: Any) -> str:
    """Load the model, answer `args.query` about `args.image_file` (or `args.video_file`), print and return it."""
    run = RunArgs.from_object(args)
    if run.image_file and run.video_file:
        raise ValueError("give image_file or video_file, not both")
    model_name = get_model_name_from_path(run.model_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        run.model_path,
        run.model_base,
        model_name,
        load_8bit=run.load_8bit,
        load_4bit=run.load_4bit,
        device=run.device or default_device(),
    )
    prepare_for_inference(model)
    generator = Generator(tokenizer, model, image_processor, model_name, run.conv_mode)
    images = [load_image(f) for f in run.image_file.split(run.sep)] if run.image_file else []
    if run.video_file:
        images = [video_to_grid(run.video_file, run.num_frames)]
    input_ids = generator.tokenize(generator.prompt(run.query, len(images)))
    params = SamplingParams(run.temperature, run.top_p, run.max_new_tokens, num_beams=run.num_beams)
    encoded = generator.encode(generator.pixels(images))
    batch = PromptBatch([input_ids], encoded, [image.size for image in images])
    budget = resolve_budget(run.matryoshka_vis_token_scale, model, run.model_path)
    if isinstance(budget, ScalePolicy):
        result = answer_adaptive(generator, batch, budget, params)[0]
        answer = result.text
        tried = ", ".join(f"{s} (p_first {p:.2f})" for s, p in zip(result.rungs, result.p_first))
        print(
            f"[auto: answered at matryoshka_vis_token_scale={result.scale}, {result.visual_tokens} visual tokens; "
            f"tried {tried}: {result.visual_tokens_processed} processed]",
            file=sys.stderr,
        )
    else:
        answer = generator.answer(batch, budget, params)[0]
    print(answer)
    return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Ask an M3 model about one or more images or a video.")
    parser.add_argument("--model-path", "--model_path", dest="model_path", required=True)
    parser.add_argument("--model-base", "--model_base", dest="model_base", default=None)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image-file", "--image_file", dest="image_file", default=None)
    source.add_argument("--video-file", "--video_file", dest="video_file", default=None, help="a video instead")
    add_num_frames_argument(parser)
    parser.add_argument("--query", required=True)
    parser.add_argument("--conv-mode", "--conv_mode", dest="conv_mode", default=None)
    parser.add_argument("--sep", default=",", help="separator between several --image-file paths")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None)
    parser.add_argument("--num_beams", "--num-beams", dest="num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int, default=512)
    add_scale_argument(
        parser,
        "visual tokens per image (per crop for anyres): 576, 144, 36, 9 or 1; default: the checkpoint's; 'auto': the "
        "checkpoint's calibrated policy picks the fewest it is sure of",
        auto=True,
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
