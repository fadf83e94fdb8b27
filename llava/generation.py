"""One path from a question to an answer, shared by every way of asking an M3 model.

    question + images → prompt (conversation template, `<image>` markers) → token ids
    → left-padded batch → `model.generate` (decoding settings, the template's stop rule) → answer text

The terminal chat, the serving engine, the evaluation harness, `run_llava`, the M3-Shapes demo and the
lmms-eval plugin all go through here, so a question is asked the same way everywhere. `Generator` holds
a loaded model with its tokenizer, image processor and template; the prompt builders are plain functions
(`build_prompt` for one user turn, `build_chat_prompt` for a chat). The visual-token budget is passed
through to the model as an int (or one int per row); the model resolves and validates it.

`Generator.encode` runs the vision tower once; `answer` can then be called at any budget on that one
encoding. The adaptive budget (answer at a small budget first, escalate when unsure) is built on that in
`llava.adaptive`, through `Generator.generate`'s `observers` (which read the model's confidence).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IMAGE_PLACEHOLDER,
    MIN_SAMPLING_VALUE,
)
from llava.conversation import get_conv_template, select_conv_mode, template_stop
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.matryoshka import parse_scales
from llava.scale_policy import AUTO, AutoScale

if TYPE_CHECKING:
    from llava.model.llava_arch import EncodedImages


def default_device() -> str:
    """The best device this machine has: cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def add_scale_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str, several: bool = False, auto: bool = False
) -> None:
    """`--matryoshka_vis_token_scale N` (or `--matryoshka-vis-token-scale`): the command-line edge where a
    budget arrives as text, parsed here into an int, or with `several` into a list ("1,9,36,144,576").
    With `auto`, "auto" is accepted too (alone or in the list) and becomes `llava.scale_policy.AUTO`: the
    checkpoint's calibrated policy. Unset: None, the checkpoint's default."""
    if several:
        kind = _auto_scales_argument if auto else _scales_argument
    else:
        kind = _auto_scale_argument if auto else int
    parser.add_argument(
        "--matryoshka_vis_token_scale",
        "--matryoshka-vis-token-scale",
        dest="matryoshka_vis_token_scale",
        type=kind,
        default=None,
        help=help,
    )


def _scales_argument(text: str) -> list[int]:
    try:
        return parse_scales(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_scale_text(text: str) -> int | AutoScale:
    """One budget typed by a user ("36" or "auto"): an int, or `AUTO`; a ValueError for anything else."""
    if text.strip().lower() == str(AUTO):
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"matryoshka_vis_token_scale={text!r} is neither an integer budget nor 'auto'") from None


def _auto_scale_argument(text: str) -> int | AutoScale:
    try:
        return parse_scale_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _auto_scales_argument(text: str) -> list[int | AutoScale]:
    parts = text.strip().strip("[]()").split(",")
    return [AUTO if part.strip().lower() == str(AUTO) else _scales_argument(part)[0] for part in parts]


# -- prompts ----------------------------------------------------------------------------------------


def image_marker(mm_use_im_start_end: bool) -> str:
    """What stands for one image in a tokenised prompt: `<image>`, wrapped in `<im_start>`/`<im_end>`
    for checkpoints trained with `mm_use_im_start_end`."""
    if mm_use_im_start_end:
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    return DEFAULT_IMAGE_TOKEN


def format_image_query(query: str, num_images: int) -> str:
    """Put the `<image>` markers into a user query, as LLaVA's run_llava and eval scripts do.

    Each `<image-placeholder>` in the query becomes a marker; a query that already holds `<image>`
    markers keeps them; otherwise one marker per image goes before the query, each on its own line.
    """
    if IMAGE_PLACEHOLDER in query:
        return query.replace(IMAGE_PLACEHOLDER, DEFAULT_IMAGE_TOKEN)
    if DEFAULT_IMAGE_TOKEN in query or not num_images:
        return query
    return (DEFAULT_IMAGE_TOKEN + "\n") * num_images + query


def build_prompt(conv_mode: str, query: str, num_images: int) -> str:
    """The prompt for one user turn in template `conv_mode`, ending where the assistant's answer begins."""
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], format_image_query(query, num_images))
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@dataclass
class ChatTurn:
    """One chat message: its role ("system", "user" or "assistant") and its text, image and video parts in order."""

    role: str
    parts: list[tuple[str, Any]] = field(default_factory=list)
    """("text", text), ("image", payload) or ("video", payload) in the order they appear; payloads are passed
    through."""


class ChatVideo(NamedTuple):
    """A video's place among a chat's images (`ChatPrompt.images`).

    The model sees a video as one image, IG-VLM's grid of a few of its frames (`llava.video`), so a video
    takes one `<image>` marker; this wrapper tells whoever decodes the images to build that grid from
    `source`, the video part's payload as it was given.
    """

    source: Any


class ChatPrompt(NamedTuple):
    """A laid-out chat: `prompt, images, stop = build_chat_prompt(...)`."""

    prompt: str
    images: list[Any]
    """The image payloads, in the order of the prompt's `<image>` markers; a video's payload as a `ChatVideo`."""
    stop: str | None
    """The template's end of an assistant turn (`template_stop`)."""


def build_chat_prompt(turns: Sequence[ChatTurn], conv_mode: str) -> ChatPrompt:
    """Lay out a chat in template `conv_mode`, ending with the assistant's turn to write.

    Images and videos become `<image>` markers where they stand in a message, so images and markers always
    match (a video is one image, its frame grid: see `ChatVideo`).
    System turns replace the template's system prompt; user and assistant turns must alternate
    starting with the user (consecutive turns of one role are joined) and end with the user.
    """
    conv = get_conv_template(conv_mode)
    images: list[Any] = []
    merged: list[tuple[str, str]] = []
    for turn in turns:
        text = _turn_text(turn, images)
        if turn.role in ("system", "developer"):
            conv.system = text
            continue
        if turn.role not in ("user", "assistant"):
            raise ValueError(f"unknown message role {turn.role!r}; use system, user or assistant")
        if merged and merged[-1][0] == turn.role:
            merged[-1] = (turn.role, merged[-1][1] + "\n" + text)
        else:
            merged.append((turn.role, text))
    if not merged or merged[0][0] != "user":
        raise ValueError("the conversation must start with a user message (after any system message)")
    if merged[-1][0] != "user":
        raise ValueError("the last message must be from the user")
    for role, text in merged:
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    conv.append_message(conv.roles[1], None)
    return ChatPrompt(conv.get_prompt(), images, template_stop(conv))


def _turn_text(turn: ChatTurn, images: list[Any]) -> str:
    pieces = []
    for kind, value in turn.parts:
        if kind in ("image", "video"):
            images.append(value if kind == "image" else ChatVideo(value))
            pieces.append(DEFAULT_IMAGE_TOKEN)
        else:
            pieces.append(value)
    return "\n".join(pieces)


def tokenize_prompt(prompt: str, tokenizer: Any, mm_use_im_start_end: bool = False) -> list[int]:
    """Token ids of a prompt, `IMAGE_TOKEN_INDEX` where each `<image>` marker stands."""
    if mm_use_im_start_end:
        prompt = prompt.replace(DEFAULT_IMAGE_TOKEN, image_marker(True))
    return tokenizer_image_token(prompt, tokenizer)


# -- batches and decoding ------------------------------------------------------------------------------


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token (Llama has no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(sequences: Sequence[Sequence[int]], padding_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack id sequences padded on the left, as batched generation needs: (ids (B, L), attention mask (B, L))."""
    length = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), length), padding_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, length - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, length - len(seq) :] = 1
    return ids, mask


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request (LLaVA's `--temperature --top_p --max_new_tokens --num_beams`).

    `temperature` 0 means greedy decoding; `top_p` None keeps the whole distribution; `stop` strings end
    the answer (they are cut from it).
    """

    temperature: float = 0.2
    top_p: float | None = None
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    num_beams: int = 1


class PerRowSampling(LogitsProcessor):
    """Temperature and top-p per batch row; greedy rows (temperature 0, or below `MIN_SAMPLING_VALUE`)
    keep only their argmax, and a top-p below it samples the top token only.

    Lets one `generate(do_sample=True)` call serve requests with different sampling settings. With beam
    search each row's settings apply to its `num_beams` consecutive rows.
    """

    def __init__(self, params: Sequence[SamplingParams], num_beams: int = 1) -> None:
        def per_row(values: list[float | bool]) -> torch.Tensor:
            return torch.tensor(values).repeat_interleave(num_beams)

        greedy = [p.temperature < MIN_SAMPLING_VALUE for p in params]
        self.greedy = per_row(greedy)
        self.temperature = per_row([1.0 if g else p.temperature for p, g in zip(params, greedy)])
        self.top_p = per_row(
            [1.0 if g or p.top_p is None else max(p.top_p, MIN_SAMPLING_VALUE) for p, g in zip(params, greedy)]
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        device = scores.device
        greedy = self.greedy.to(device)[:, None]
        argmax = scores.argmax(dim=-1, keepdim=True)
        scores = top_p_filter(scores / self.temperature.to(device)[:, None], self.top_p.to(device))
        only_argmax = torch.full_like(scores, float("-inf")).scatter(1, argmax, 0.0)
        return torch.where(greedy, only_argmax, scores)


def top_p_filter(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (-inf) each row's tokens outside its nucleus: the smallest top set with mass ≥ top_p[row].

    scores: (B, V) logits; top_p: (B,). The most likely token always stays.
    """
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probs = sorted_scores.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before >= top_p[:, None]
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of `stops` begins in `text`, or None."""
    positions = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return min(positions) if positions else None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to its first stop string, without surrounding whitespace."""
    cut = first_stop(text, stops)
    return (text if cut is None else text[:cut]).strip()


class StopStrings(StoppingCriteria):
    """Ends each row once its decoded new tokens contain one of `stops`.

    Rows are judged from their tokens alone, with no state between calls, because beam search hands
    the criteria 2 × num_beams candidate rows per sample. `generate` from `inputs_embeds` (how LLaVA
    generates) passes only the new tokens, so a stop string in the prompt never counts.
    """

    def __init__(self, stops: Sequence[str], decode_batch: Callable[[torch.Tensor], list[str]]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.decode_batch = decode_batch

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if not self.stops:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done = [first_stop(text, self.stops) is not None for text in self.decode_batch(input_ids)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def end_token_ids(tokenizer: Any, model: Any, stops: Sequence[str] = ()) -> list[int]:
    """Token ids that end a row: the end-of-sequence ids of the tokenizer and the model's generation
    config, and each stop string that is one special token (e.g. "</s>", "<|im_end|>" where the
    tokenizer has it), since decoded text never shows special tokens."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = model.generation_config.eos_token_id
    if configured is not None:
        ids |= set(configured) if isinstance(configured, list) else {configured}
    special = set(tokenizer.all_special_ids)
    for stop in stops:
        stop_ids = tokenizer(stop, add_special_tokens=False).input_ids if stop else []
        if len(stop_ids) == 1 and stop_ids[0] in special:
            ids.add(stop_ids[0])
    return sorted(ids)


# -- the model ------------------------------------------------------------------------------------------


@dataclass
class PromptBatch:
    """What one `generate` call asks: prompts and the images they show."""

    input_ids: Sequence[Sequence[int]]
    """One id list per prompt, `IMAGE_TOKEN_INDEX` where its images go (left-padded at generation)."""
    images: EncodedImages | Sequence[torch.Tensor] | None = None
    """The prompts' images in marker order: `Generator.encode`'s result (one tower pass, any scale) or pixels."""
    image_sizes: Sequence[tuple[int, int]] | None = None
    """(width, height) of each of those images (anyres checkpoints need them)."""


@dataclass
class Generator:
    """A loaded LLaVA/M3 model with what it takes to ask it: tokenizer, image processor and template.

    Every use of the tokenizer goes through its methods, under one lock: fast tokenizers are not safe
    to call from several threads at once ("Already borrowed"), and a server prepares requests on some
    threads while it generates on another.
    """

    tokenizer: Any
    model: Any
    image_processor: Any
    model_name: str
    """The checkpoint's name (`get_model_name_from_path`): answers files record it, templates are guessed from it."""
    conv_mode: str | None = None
    """The conversation template; None: the one stored with the checkpoint, else guessed from its name."""
    _tokenizer_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.conv_mode = self.conv_mode or select_conv_mode(self.model_name, self.model.config.conv_template)

    @property
    def stop(self) -> str | None:
        """The end of an assistant turn in this generator's template."""
        return template_stop(get_conv_template(self.conv_mode))

    def prompt(self, query: str, num_images: int) -> str:
        return build_prompt(self.conv_mode, query, num_images)

    def tokenize(self, prompt: str) -> list[int]:
        with self._tokenizer_lock:
            return tokenize_prompt(prompt, self.tokenizer, bool(self.model.config.mm_use_im_start_end))

    def decode(self, ids: Sequence[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        with self._tokenizer_lock:
            return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def end_token_ids(self, stops: Sequence[str] = ()) -> list[int]:
        with self._tokenizer_lock:
            return end_token_ids(self.tokenizer, self.model, stops)

    def pixels(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """One pixel tensor per PIL image: (3, H, W), or (1 + crops, 3, H, W) for anyres; on the CPU."""
        return list(process_images(images, self.image_processor, self.model.config)) if images else []

    def encode(self, pixels: Sequence[torch.Tensor]) -> EncodedImages | None:
        """One pass of the vision tower and projector over the images (None for none), for any budget."""
        if not pixels:
            return None
        param = next(self.model.get_vision_tower().parameters())
        with torch.no_grad():
            return self.model.encode_images([p.to(param.device, param.dtype) for p in pixels])

    def generate(
        self,
        batch: PromptBatch,
        scale: int | Sequence[int] | None,
        params: SamplingParams | Sequence[SamplingParams],
        stopping: StoppingCriteria | None = None,
        logits_processor: LogitsProcessor | None = None,
        observers: Sequence[LogitsProcessor] = (),
    ) -> torch.Tensor:
        """New token ids (B, T) for a batch of prompts in one `generate` call.

        Args:
            scale: visual tokens per image (per crop for anyres): one int, one per prompt, or None for the
                checkpoint's default.
            params: one `SamplingParams` for all prompts or one per prompt (per-row temperature and top-p).
            stopping: what ends the rows (default: `StopStrings` over the params' stop strings); rows also
                end on `end_token_ids` and at the largest `max_new_tokens`.
            logits_processor: applied after the sampling settings, e.g. to constrain what may be answered.
            observers: see each step's scores before any sampling setting (they must not change them), e.g. to
                read the model's confidence in its first answer token.
        """
        rows = [params] * len(batch.input_ids) if isinstance(params, SamplingParams) else list(params)
        num_beams = rows[0].num_beams
        if any(p.num_beams != num_beams for p in rows):
            raise ValueError("one generate call needs one num_beams for every row")
        stops = sorted({stop for p in rows for stop in p.stop})
        ids, mask = left_pad(batch.input_ids, pad_token_id(self.tokenizer))
        device = self.model.get_input_embeddings().weight.device
        do_sample = any(p.temperature > 0 for p in rows)
        processors = [*observers, *([PerRowSampling(rows, num_beams)] if do_sample else [])]
        processors += [logits_processor] if logits_processor is not None else []
        return self.model.generate(
            ids.to(device),
            attention_mask=mask.to(device),
            images=batch.images,
            image_sizes=batch.image_sizes,
            matryoshka_vis_token_scale=scale,
            max_new_tokens=max(p.max_new_tokens for p in rows),
            do_sample=do_sample,
            # PerRowSampling does temperature and top-p; 1.0 keeps a checkpoint's own settings from applying twice.
            temperature=1.0,
            top_p=1.0,
            num_beams=num_beams,
            pad_token_id=pad_token_id(self.tokenizer),
            eos_token_id=self.end_token_ids(stops),
            use_cache=True,
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList([stopping or StopStrings(stops, self.decode_batch)]),
        )

    def answer(
        self,
        batch: PromptBatch,
        scale: int | Sequence[int] | None,
        params: SamplingParams,
        logits_processor: LogitsProcessor | None = None,
    ) -> list[str]:
        """Answer a batch of prompts: generate, decode, and cut each answer where the assistant's turn
        ends (the template's stop) or at one of `params.stop`."""
        params = self.with_template_stop(params)
        output = self.generate(batch, scale, params, logits_processor=logits_processor)
        return self.answer_texts(output, params.stop)

    def with_template_stop(self, params: SamplingParams) -> SamplingParams:
        """`params` whose stop strings also hold the end of the assistant's turn in this template."""
        return replace(params, stop=tuple(dict.fromkeys((*params.stop, *([self.stop] if self.stop else [])))))

    def answer_texts(self, output: torch.Tensor, stops: Sequence[str]) -> list[str]:
        """Decoded rows of `generate`'s new tokens (B, T), each cut at its first stop string."""
        return [cut_at_stop(text, stops) for text in self.decode_batch(output)]
