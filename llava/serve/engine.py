"""One loaded model and the two things serving does with it: prepare a request, generate a batch.

`InferenceEngine.prepare` turns a prompt, its images and a visual-token budget into a
`PreparedRequest`, refusing (`RequestError`, 400) what cannot be served: an invalid scale (the
message lists the valid ones), images that do not match the `<image>` placeholders, a prompt that
leaves no room for an answer. `max_new_tokens` is budgeted against the prompt's real length, i.e.
its text tokens plus the visual tokens its images cost *at the requested scale* (anyres-aware).

`InferenceEngine.run_batch` generates for several requests in one `model.generate` call: prompts
left-padded, one scale per sample (mixed budgets in one batch), per-row temperature / top-p, and a
`BatchTracker` that streams each row's text as it grows and stops each row on its own EOS, stop
string, token limit or cancellation. The engine has no thread of its own: `BatchScheduler` feeds it
from a server, the CLI calls it directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import select_conv_mode
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.matryoshka import TRAINED_SCALES, valid_scales
from llava.serve.errors import RequestError

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS_LIMIT = 1024
DEFAULT_MAX_IMAGES = 8


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request. `temperature` 0 means greedy decoding."""

    temperature: float = 0.2
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()


@dataclass
class PreparedRequest:
    """A validated request, ready to be batched: token ids, pixels and its token budget."""

    prompt: str
    input_ids: list[int]
    """Prompt ids with `IMAGE_TOKEN_INDEX` where each image's visual tokens go."""
    pixel_values: list[torch.Tensor]
    """One tensor per image: (3, H, W), or (1 + crops, 3, H, W) for anyres."""
    image_sizes: list[tuple[int, int]]
    scale: int
    visual_tokens: int
    """Visual tokens of all images at `scale`, as the model will splice them in."""
    prompt_tokens: int
    """Text tokens + visual tokens: the length of the sequence the language model reads."""
    max_new_tokens: int
    """The requested limit, cut to what the context length leaves after the prompt."""
    sampling: SamplingParams


@dataclass
class GenerationChunk:
    """One streamed update for one request."""

    text: str
    """The whole answer so far (stop strings removed)."""
    delta: str = ""
    """What `text` gained since the previous chunk."""
    finish_reason: str | None = None
    """None while generating; then "stop" (EOS or a stop string), "length" or "error"."""
    completion_tokens: int = 0
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Job:
    """A prepared request plus where its chunks go. `emit` is called from the generating thread."""

    prepared: PreparedRequest
    emit: Callable[[GenerationChunk], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Stop generating for this request at the next step (the client went away)."""
        self.cancelled = True


class InferenceEngine:
    """A loaded LLaVA/M3 model with its tokenizer and image processor, and the serving limits on it."""

    def __init__(
        self,
        tokenizer: Any,
        model: torch.nn.Module,
        image_processor: Any,
        context_len: int,
        model_name: str,
        conv_mode: str | None = None,
        max_new_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS_LIMIT,
        max_images: int = DEFAULT_MAX_IMAGES,
        default_scale: int | None = None,
    ) -> None:
        if not hasattr(model, "get_vision_tower") or model.get_vision_tower() is None:
            raise ValueError(f"{model_name} has no vision tower; the M3 servers serve LLaVA/M3 checkpoints only")
        self.tokenizer = tokenizer
        self.model = model
        self.image_processor = image_processor
        self.context_len = context_len
        self.model_name = model_name
        self.conv_mode = conv_mode or select_conv_mode(model_name, model.config.conv_template)
        self.max_new_tokens_limit = max_new_tokens_limit
        self.max_images = max_images
        # Fast tokenizers are not safe to call from several threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_token_ids = _eos_ids(tokenizer, model)
        # The server's default budget; None defers to the checkpoint's. Checked now so a bad flag fails at startup.
        self._default_scale = None if default_scale is None else model.resolve_scales(default_scale, 1)[0]

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        model_base: str | None = None,
        model_name: str | None = None,
        device: str = "cuda",
        load_8bit: bool = False,
        load_4bit: bool = False,
        use_flash_attn: bool = False,
        torch_compile: bool = False,
        cpu_weight_prepack: bool | None = None,
        **engine_kwargs: Any,
    ) -> InferenceEngine:
        """Load a checkpoint with `load_pretrained_model` and wrap it."""
        from llava.mm_utils import get_model_name_from_path
        from llava.model.builder import load_pretrained_model
        from llava.model.cpu_packing import prepare_for_inference

        model_name = model_name or get_model_name_from_path(model_path)
        tokenizer, model, image_processor, context_len = load_pretrained_model(
            model_path,
            model_base,
            model_name,
            load_8bit,
            load_4bit,
            device=device,
            use_flash_attn=use_flash_attn,
            torch_compile=torch_compile,
        )
        prepare_for_inference(model, cpu_weight_prepack)
        return cls(tokenizer, model, image_processor, context_len, model_name, **engine_kwargs)

    # -- what the model offers ----------------------------------------------------------------

    @property
    def grid_side(self) -> int:
        return self.model.grid_side

    @property
    def valid_scales(self) -> list[int]:
        return valid_scales(self.grid_side)

    @property
    def trained_scales(self) -> list[int]:
        """The budgets the checkpoint was trained on (the M3 five where the config names no list)."""
        return sorted(self.model.config.training_scales or [s for s in TRAINED_SCALES if s in self.valid_scales])

    @property
    def default_scale(self) -> int:
        return self.resolve_scale(None)

    @property
    def is_anyres(self) -> bool:
        return self.model.config.is_anyres

    def resolve_scale(self, scale: int | str | None) -> int:
        """The request's budget (None: the checkpoint's default), or a 400 listing the valid values."""
        if isinstance(scale, list | tuple | dict):
            raise RequestError(
                400,
                f"matryoshka_vis_token_scale must be one integer per request; valid values: {self.valid_scales}",
                "matryoshka_vis_token_scale",
            )
        if scale is None and self._default_scale is not None:
            return self._default_scale
        try:
            return self.model.resolve_scales(scale, 1)[0]
        except ValueError as e:
            message = str(e)
            if "valid values" not in message:
                message += f"; valid values: {self.valid_scales}"
            raise RequestError(400, message, "matryoshka_vis_token_scale") from None

    def num_visual_tokens(self, scale: int | str | None, image_size: tuple[int, int] | None = None) -> int:
        """Visual tokens one image costs at `scale` (for anyres, an image of `image_size`; square if None)."""
        scale = self.resolve_scale(scale)
        if self.is_anyres and image_size is None:
            side = self.model.get_vision_tower().image_size
            image_size = (side, side)
        return self.model.num_visual_tokens(scale, image_size=image_size)

    def info(self) -> dict[str, Any]:
        """What clients need to offer a budget choice: grid, valid and trained scales, the default."""
        return {
            "grid_side": self.grid_side,
            "valid_scales": self.valid_scales,
            "trained_scales": self.trained_scales,
            "default_scale": self.default_scale,
            "anyres": self.is_anyres,
            "context_length": self.context_len,
            "conv_template": self.conv_mode,
        }

    # -- requests ---------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self.tokenizer(text).input_ids)

    def decode(self, ids: Sequence[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prepare(
        self,
        prompt: str,
        images: Sequence[Image.Image],
        scale: int | str | None,
        sampling: SamplingParams,
    ) -> PreparedRequest:
        """Validate a request and compute its token budget; raises `RequestError` (400) when it cannot run."""
        resolved = self.resolve_scale(scale)
        placeholders = prompt.count(DEFAULT_IMAGE_TOKEN)
        if len(images) > self.max_images:
            raise RequestError(
                400, f"{len(images)} images in one request; this server accepts at most {self.max_images}"
            )
        if len(images) != placeholders:
            raise RequestError(
                400,
                f"the prompt has {placeholders} {DEFAULT_IMAGE_TOKEN} placeholder(s) but {len(images)} image(s) were "
                f"sent; put one {DEFAULT_IMAGE_TOKEN} where each image belongs",
            )
        if sampling.max_new_tokens < 1:
            raise RequestError(
                400, f"max_new_tokens must be at least 1, got {sampling.max_new_tokens}", "max_new_tokens"
            )
        model_prompt = prompt
        if self.model.config.mm_use_im_start_end:
            model_prompt = prompt.replace(
                DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
            )
        with self._tokenizer_lock:
            input_ids = tokenizer_image_token(model_prompt, self.tokenizer)
        sizes = [image.size for image in images]
        visual = sum(self.model.num_visual_tokens(resolved, image_size=size) for size in sizes)
        text_tokens = sum(1 for t in input_ids if t != IMAGE_TOKEN_INDEX)
        prompt_tokens = text_tokens + visual
        room = self.context_len - prompt_tokens
        if room < 1:
            raise RequestError(
                400,
                f"the prompt is {prompt_tokens} tokens ({text_tokens} text + {visual} visual at "
                f"matryoshka_vis_token_scale={resolved}), which leaves no room for an answer in the context length "
                f"of {self.context_len}; shorten the prompt or choose a smaller scale",
            )
        max_new_tokens = min(sampling.max_new_tokens, self.max_new_tokens_limit, room)
        return PreparedRequest(
            prompt=prompt,
            input_ids=input_ids,
            pixel_values=[self._pixels(image) for image in images],
            image_sizes=sizes,
            scale=resolved,
            visual_tokens=visual,
            prompt_tokens=prompt_tokens,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
        )

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        pixels = process_images([image], self.image_processor, self.model.config)
        return pixels[0]

    # -- generation -------------------------------------------------------------------------

    def run_batch(self, jobs: Sequence[Job]) -> None:
        """Generate for every job in one batch, streaming each job's chunks through its `emit`.

        Never raises for a failed generation: every unfinished job then gets an "error" chunk, so a
        server thread can go on serving.
        """
        jobs = [job for job in jobs if not job.cancelled]
        if not jobs:
            return
        tracker = BatchTracker(jobs, self.decode, self.eos_token_ids)
        try:
            inputs = self._collate(jobs)
            sampling = [job.prepared.sampling for job in jobs]
            do_sample = any(s.temperature > 0 for s in sampling)
            config = GenerationConfig(
                max_new_tokens=max(job.prepared.max_new_tokens for job in jobs),
                do_sample=do_sample,
                pad_token_id=self.pad_token_id,
                eos_token_id=sorted(self.eos_token_ids),
                use_cache=True,
            )
            processors = LogitsProcessorList([PerRowSampling(sampling)] if do_sample else [])
            self.model.generate(
                **inputs,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([tracker]),
            )
        except Exception as e:  # a failed batch must not take the server down
            logger.exception("generation failed for a batch of %d", len(jobs))
            tracker.fail(f"generation failed: {type(e).__name__}: {e}")
            return
        tracker.finish()

    def _collate(self, jobs: Sequence[Job]) -> dict[str, Any]:
        """Left-padded ids + mask, the batch's images in placeholder order, one scale per sample."""
        tower = self.model.get_vision_tower()
        param = next(tower.parameters())
        ids = [job.prepared.input_ids for job in jobs]
        length = max(len(x) for x in ids)
        input_ids = torch.tensor([[self.pad_token_id] * (length - len(x)) + x for x in ids], dtype=torch.long)
        attention_mask = torch.tensor([[0] * (length - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
        pixels = [p.to(param.device, param.dtype) for job in jobs for p in job.prepared.pixel_values]
        sizes = [size for job in jobs for size in job.prepared.image_sizes]
        device = self.model.get_input_embeddings().weight.device
        return {
            "inputs": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "images": pixels or None,
            "image_sizes": sizes or None,
            "matryoshka_vis_token_scale": [job.prepared.scale for job in jobs],
        }


def _eos_ids(tokenizer: Any, model: torch.nn.Module) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = model.generation_config.eos_token_id
    if configured is not None:
        ids |= set(configured) if isinstance(configured, list) else {configured}
    return ids


class PerRowSampling(LogitsProcessor):
    """Temperature and top-p per batch row; greedy rows (temperature 0) keep only their argmax.

    Lets one `generate(do_sample=True)` call serve requests with different sampling settings.
    """

    def __init__(self, params: Sequence[SamplingParams]) -> None:
        self.greedy = torch.tensor([p.temperature <= 0 for p in params])
        self.temperature = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params])
        self.top_p = torch.tensor([p.top_p if p.temperature > 0 else 1.0 for p in params])

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


@dataclass
class _Row:
    job: Job
    ids: list[int] = field(default_factory=list)
    generated: int = 0
    emitted: str = ""
    done: bool = False


class BatchTracker(StoppingCriteria):
    """Streams each row's text and decides, row by row, when it is finished.

    Called by `generate` after every step with the tokens so far (from `inputs_embeds` generation
    they are the new tokens only; the last column is always the newest). A row finishes on an EOS
    id, a stop string (cut from the text), its own `max_new_tokens`, or cancellation; finished
    rows are reported done so `generate` pads them and ends when every row is done.
    """

    def __init__(self, jobs: Sequence[Job], decode: Callable[[Sequence[int]], str], eos_ids: set[int]) -> None:
        self.rows = [_Row(job) for job in jobs]
        self.decode = decode
        self.eos_ids = eos_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, newest):
            if not row.done:
                self._step(row, token)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def _step(self, row: _Row, token: int) -> None:
        if row.job.cancelled:
            row.done = True
            return
        row.generated += 1
        if token in self.eos_ids:
            self._finish(row, "stop")
            return
        row.ids.append(token)
        text = self.decode(row.ids)
        stops = row.job.prepared.sampling.stop
        cut = _first_stop(text, stops)
        if cut is not None:
            self._finish(row, "stop", text[:cut])
        elif row.generated >= row.job.prepared.max_new_tokens:
            self._finish(row, "length", text)
        else:
            visible = _hold_back(text, stops)
            if len(visible) > len(row.emitted) and visible.startswith(row.emitted):
                delta, row.emitted = visible[len(row.emitted) :], visible
                self._emit(row, GenerationChunk(text=visible, delta=delta, completion_tokens=row.generated))

    def _finish(self, row: _Row, reason: str, text: str | None = None) -> None:
        row.done = True
        text = self.decode(row.ids) if text is None else text
        delta = text[len(row.emitted) :] if text.startswith(row.emitted) else ""
        self._emit(row, GenerationChunk(text=text, delta=delta, finish_reason=reason, completion_tokens=row.generated))

    def _emit(self, row: _Row, chunk: GenerationChunk) -> None:
        try:
            row.job.emit(chunk)
        except Exception:  # the receiver is gone (closed event loop, broken pipe): stop this row only
            logger.warning("dropping a request whose receiver failed", exc_info=True)
            row.job.cancel()
            row.done = True

    def finish(self) -> None:
        """After `generate` returned: rows that ran into the batch's token limit end with "length"."""
        for row in self.rows:
            if not row.done and not row.job.cancelled:
                self._finish(row, "length")

    def fail(self, message: str) -> None:
        for row in self.rows:
            if not row.done:
                row.done = True
                self._emit(
                    row,
                    GenerationChunk(
                        text=row.emitted, finish_reason="error", error=message, completion_tokens=row.generated
                    ),
                )


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    positions = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return min(positions) if positions else None


def _hold_back(text: str, stops: Sequence[str]) -> str:
    """The part of `text` safe to stream: no unfinished UTF-8 tail, no tail that may begin a stop string."""
    text = text.rstrip("\ufffd")
    cut = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), cut, -1):
            if text.endswith(stop[:k]):
                cut = k
                break
    return text[: len(text) - cut]
