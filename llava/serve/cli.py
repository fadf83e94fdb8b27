"""Terminal chat about an image or a video, answers streamed as they are generated.

    python -m llava.serve.cli --model-path mucai/llava-v1.5-7b-m3 --image-file images/shapes.png \\
        --matryoshka_vis_token_scale 36
    python -m llava.serve.cli --model-path mucai/llava-v1.5-7b-m3 --video-file clip.mp4 --num-frames 6

A video is shown to the model as one image, IG-VLM's grid of `--num-frames` of its frames.

Commands between turns: `/scale N` changes the visual-token budget (the whole conversation is
re-read at the new budget on the next turn), `/scale auto` lets the checkpoint's calibrated policy pick
the budget of each answer (printed after it), `/reset` starts over, `/help`. EOF (Ctrl-D) or Ctrl-C ends.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from PIL import Image

from llava.conversation import get_conv_template
from llava.generation import (
    ChatTurn,
    SamplingParams,
    add_scale_argument,
    build_chat_prompt,
    default_device,
    parse_scale_text,
)
from llava.mm_utils import load_image
from llava.scale_policy import ScalePolicy
from llava.serve.args import add_loading_arguments
from llava.serve.engine import GenerationChunk, InferenceEngine, Job
from llava.serve.http import RequestError
from llava.video import add_num_frames_argument, video_to_grid

logger = logging.getLogger(__name__)

HELP = (
    "commands: /scale N (visual-token budget) or /scale auto (the calibrated policy picks it per answer), "
    "/reset (new conversation), /help; Ctrl-D or Ctrl-C to quit"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chat with a LLaVA/M3 model in the terminal", prog="python -m llava.serve.cli"
    )
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--model-name", default=None)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image-file", default=None, help="local image file or http(s) URL")
    source.add_argument("--video-file", default=None, help="local video file, seen as the grid of a few frames")
    add_num_frames_argument(parser)
    add_scale_argument(
        parser,
        "visual-token budget (1/9/36/144/576; default: the checkpoint's), or 'auto': the checkpoint's calibrated "
        "policy picks the fewest visual tokens it is sure of, per answer",
        auto=True,
    )
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--conv-mode", default=None)
    parser.add_argument("--temperature", type=float, default=0.2, help="0 for greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    add_loading_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="print each prompt and its token counts")
    return parser.parse_args(argv)


class ChatSession:
    """One conversation with an engine: the turns so far, the image and the current budget.

    Each turn lays out the whole chat again (`build_chat_prompt`), so a budget change applies to the
    image from the next turn on.
    """

    def __init__(
        self,
        engine: InferenceEngine,
        image: Image.Image | None,
        scale: int | ScalePolicy,
        sampling: SamplingParams,
        debug: bool = False,
    ) -> None:
        self.engine = engine
        self.image = image
        self.scale = scale
        self.sampling = sampling
        self.debug = debug
        self.roles = get_conv_template(engine.conv_mode).roles
        self.turns: list[ChatTurn] = []

    def describe_scale(self) -> str:
        size = self.image.size if self.image is not None else None
        where = "for this image" if self.image is not None else "per image"
        if isinstance(self.scale, ScalePolicy):
            low, high = (
                self.engine.num_visual_tokens(s, size) for s in (self.scale.ladder[0], self.scale.reachable[-1])
            )
            return f"matryoshka_vis_token_scale=auto: {self.scale.describe()}, {low} to {high} visual tokens {where}"
        tokens = self.engine.num_visual_tokens(self.scale, size)
        return f"matryoshka_vis_token_scale={self.scale}: {tokens} visual tokens {where}"

    def set_scale(self, value: str) -> str:
        """`/scale N` or `/scale auto`: the command-line edge where the budget arrives as text."""
        try:
            self.scale = self.engine.resolve_budget(parse_scale_text(value))
        except ValueError:
            return f"error: /scale takes an integer budget or auto, e.g. /scale 9; valid values: {self.engine.valid_scales}"
        except RequestError as e:
            return f"error: {e.message}"
        return self.describe_scale()

    def reset(self) -> None:
        self.turns = []

    def ask(self, text: str) -> GenerationChunk:
        """Send one user turn and stream the answer to stdout; returns the final chunk."""
        # The image belongs to the first turn; every later turn re-sends it with the whole history.
        parts = [("image", self.image)] if self.image is not None and not self.turns else []
        turns = [*self.turns, ChatTurn("user", [*parts, ("text", text)])]
        chat = build_chat_prompt(turns, self.engine.conv_mode)
        sampling = replace(self.sampling, stop=(chat.stop,) if chat.stop else ())
        prepared = self.engine.prepare(chat.prompt, chat.images, self.scale, sampling)
        if self.debug:
            print(
                f"\n[prompt: {prepared.prompt_tokens} tokens, {prepared.visual_tokens} visual]\n{chat.prompt}\n",
                flush=True,
            )
        final: list[GenerationChunk] = []

        def emit(chunk: GenerationChunk) -> None:
            print(chunk.delta, end="", flush=True)
            if chunk.done:
                final.append(chunk)

        print(f"{self.roles[1]}: ", end="", flush=True)
        self.engine.run_batch([Job(prepared, emit)])
        print(flush=True)
        result = final[0]
        if isinstance(self.scale, ScalePolicy) and result.scale_used is not None:
            print(
                f"[auto: answered at matryoshka_vis_token_scale={result.scale_used}, {result.visual_tokens} visual "
                f"tokens; {result.visual_tokens_processed} processed over the rungs tried]",
                flush=True,
            )
        self.turns = [*turns, ChatTurn("assistant", [("text", result.text)])]
        if result.error:
            print(f"error: {result.error}", file=sys.stderr, flush=True)
        return result


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        image = load_image(args.image_file) if args.image_file else None
        if args.video_file:
            image = video_to_grid(args.video_file, args.num_frames)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    engine = InferenceEngine.from_args(args, max_new_tokens_limit=max(args.max_new_tokens, 1))
    try:
        scale = engine.resolve_budget(args.matryoshka_vis_token_scale)
    except RequestError as e:
        raise SystemExit(f"error: {e.message}") from None
    sampling = SamplingParams(args.temperature, args.top_p, args.max_new_tokens)
    session = ChatSession(engine, image, scale, sampling, debug=args.debug)
    print(f"{engine.model_name}: {session.describe_scale()}\n{HELP}", flush=True)
    while True:
        try:
            text = input(f"{session.roles[0]}: ")
        except (EOFError, KeyboardInterrupt):
            print("\nbye", flush=True)
            return
        command, _, rest = text.strip().partition(" ")
        if not text.strip():
            continue
        if command == "/scale":
            print(session.set_scale(rest), flush=True)
        elif command == "/reset":
            session.reset()
            print("new conversation", flush=True)
        elif command in ("/help", "/?"):
            print(HELP, flush=True)
        elif command in ("/quit", "/exit"):
            print("bye", flush=True)
            return
        else:
            try:
                session.ask(text)
            except RequestError as e:
                print(f"error: {e.message} (/reset starts a new conversation)", flush=True)
            except KeyboardInterrupt:
                print("\nbye", flush=True)
                return


if __name__ == "__main__":
    main()
