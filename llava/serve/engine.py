"""One loaded model and the two things serving does with it: prepare a request, generate a batch.

`CheckpointRules.plan` turns a prompt, its images' sizes and a visual-token budget into a
`PreparedRequest`, refusing (`RequestError`, 400) what cannot be served: an invalid scale (the
message lists the valid ones), images that do not match the `<image>` placeholders, a prompt that
leaves no room for an answer. `max_new_tokens` is budgeted against the prompt's real length, i.e.
its text tokens plus the visual tokens its images cost *at the requested scale* (anyres-aware).
The rules read only the config and the tokenizer, so every serving backend validates with them,
including those whose engine runs elsewhere (a model built on the meta device serves); the
`InferenceEngine` is the rules plus the weights: `prepare` adds the pixels to the plan.

`InferenceEngine.run_batch` generates for several requests in one `model.generate` call, through the
prompt → generate path every caller shares (`llava.generation.Generator`): prompts left-padded, one
scale per sample (mixed budgets in one batch), per-row temperature / top-p, and a `BatchTracker` that
streams each row's text as it grows and stops each row on its own end token, stop string, token limit
or cancellation (`AnswerTracker`, one per row, which the vLLM backend also feeds, token by token).
The engine has no thread of its own: `BatchScheduler` feeds it from a server, the CLI calls it directly.

A request may ask for the adaptive budget instead of a scale (a `ScalePolicy`, e.g. the checkpoint's
calibrated one for `auto`): its rows walk the policy's ladder (`llava.adaptive.answer_adaptive`), only the
answering rung streams, and the final chunk says which budget answered and what the answer cost.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from PIL import Image
from transformers import StoppingCriteria

from llava.adaptive import AdaptiveAnswer, answer_adaptive, answer_every_scale, check_policy, default_policy
from llava.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_MAX_IMAGES, DEFAULT_MAX_NEW_TOKENS_LIMIT, IMAGE_TOKEN_INDEX
from llava.generation import Generator, PromptBatch, SamplingParams, first_stop
from llava.model.matryoshka import TRAINED_SCALES, valid_scales
from llava.scale_picture import scale_picture
from llava.scale_policy import AUTO, AutoScale, ScalePolicy, load_checkpoint_policy
from llava.serve.http import RequestError

logger = logging.getLogger(__name__)


@dataclass
class PreparedRequest:
    """A validated request, ready to be batched: token ids, pixels and its token budget."""

    prompt: str
    input_ids: list[int]
    """Prompt ids with `IMAGE_TOKEN_INDEX` where each image's visual tokens go."""
    pixel_values: list[torch.Tensor]
    """One tensor per image: (3, H, W), or (1 + crops, 3, H, W) for anyres."""
    image_sizes: list[tuple[int, int]]
    scale: int | ScalePolicy
    """A fixed budget, or the policy that picks one per request."""
    visual_tokens: int
    """Visual tokens of all images at `scale` (at the policy's largest rung), as the model will splice them in."""
    prompt_tokens: int
    """Text tokens + visual tokens: the length of the sequence the language model reads."""
    max_new_tokens: int
    """The requested limit, cut to what the context length leaves after the prompt."""
    sampling: SamplingParams
    images: list[Image.Image] = field(default_factory=list)
    """The decoded images, for engines that preprocess them themselves; empty when `pixel_values` hold them."""


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
    scale_used: int | None = None
    """Set on the final chunk: the budget that answered (the policy's answering rung for a policy request)."""
    visual_tokens: int | None = None
    """Set on the final chunk: visual tokens of the answering budget."""
    visual_tokens_processed: int | None = None
    """Set on the final chunk: visual tokens read over every rung tried (= `visual_tokens` at a fixed budget)."""

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


def requested_budget(prepared: PreparedRequest) -> int | str:
    """The budget a request asked for, as the APIs write it: the scale, or "auto" for a policy."""
    return str(AUTO) if isinstance(prepared.scale, ScalePolicy) else prepared.scale


def answer_usage(prepared: PreparedRequest, final: GenerationChunk) -> dict[str, Any]:
    """What an answer cost, as every API reports it (the worker's last chunk, OpenAI's `usage`).

    `prompt_tokens` is what the language model read at the budget that answered: the text tokens plus
    `visual_tokens` (for a policy, its answering rung's, not the largest rung's that `prepared` was budgeted
    at); `visual_tokens_processed` adds the rungs tried before it. Engines that do not report the budget
    used (a remote engine) answered at the request's fixed budget.
    """
    fixed = None if isinstance(prepared.scale, ScalePolicy) else prepared.scale
    visual = final.visual_tokens if final.visual_tokens is not None else prepared.visual_tokens
    processed = final.visual_tokens_processed if final.visual_tokens_processed is not None else visual
    prompt_tokens = prepared.prompt_tokens - prepared.visual_tokens + visual
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": prompt_tokens + final.completion_tokens,
        "visual_tokens": visual,
        "visual_tokens_processed": processed,
        "matryoshka_vis_token_scale": requested_budget(prepared),
        "matryoshka_vis_token_scale_used": final.scale_used if final.scale_used is not None else fixed,
    }


@dataclass
class Job:
    """A prepared request plus where its chunks go. `emit` is called from the generating thread."""

    prepared: PreparedRequest
    emit: Callable[[GenerationChunk], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Stop generating for this request at the next step (the client went away)."""
        self.cancelled = True


class CheckpointRules:
    """What a checkpoint accepts and what a request costs: budgets, visual tokens, context, serving limits.

    Reads the model's config and tower shape and the tokenizer, never the weights: `model` may be built
    on the meta device (see `llava.serve.backends.base.rules_from_checkpoint`).
    """

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
        scale_policy: ScalePolicy | None = None,
    ) -> None:
        if not hasattr(model, "get_vision_tower") or model.get_vision_tower() is None:
            raise ValueError(f"{model_name} has no vision tower; the M3 servers serve LLaVA/M3 checkpoints only")
        self.generator = Generator(tokenizer, model, image_processor, model_name, conv_mode)
        self.model = model
        self.conv_mode = self.generator.conv_mode
        self.context_len = context_len
        self.model_name = model_name
        self.max_new_tokens_limit = max_new_tokens_limit
        self.max_images = max_images
        if default_scale is not None:  # the server's flag replaces the checkpoint's default; a bad one fails now
            model.config.matryoshka_default_scale = model.resolve_scale(default_scale)
        self.scale_policy = check_policy(model, scale_policy) if scale_policy is not None else None
        """The checkpoint's calibrated policy (`matryoshka_policy.json`), what `auto` asks for."""

    @property
    def grid_side(self) -> int:
        return self.model.grid_side

    @property
    def valid_scales(self) -> list[int]:
        return valid_scales(self.grid_side)

    @property
    def trained_scales(self) -> list[int]:
        """The budgets the checkpoint was trained on (the M3 five where the config names no list)."""
        trained = self.model.config.matryoshka_train_scales
        return sorted(trained or [s for s in TRAINED_SCALES if s in self.valid_scales])

    @property
    def default_scale(self) -> int:
        return self.resolve_scale(None)

    @property
    def is_anyres(self) -> bool:
        return self.model.config.is_anyres

    def resolve_scale(self, scale: int | None) -> int:
        """The request's budget (None: the default), or a 400 that names the allowed types and values.
        Text is parsed at the edge (flags, request models), never here."""
        try:
            return self.model.resolve_scale(scale)
        except (TypeError, ValueError) as e:
            raise RequestError(400, str(e), "matryoshka_vis_token_scale") from None

    @cached_property
    def auto_policy(self) -> ScalePolicy:
        """The policy `auto` stands for: the checkpoint's calibrated one, else the uncalibrated default
        (said once per server, not on every request)."""
        if self.scale_policy is None:
            logger.warning(
                "%s has no calibrated matryoshka_policy.json; 'auto' uses an uncalibrated threshold", self.model_name
            )
            return default_policy(self.model)
        return self.scale_policy

    def resolve_budget(self, scale: int | AutoScale | ScalePolicy | None) -> int | ScalePolicy:
        """A request's budget: a validated scale (None: the default), or a policy (`AUTO`: the checkpoint's)."""
        if isinstance(scale, AutoScale):
            return self.auto_policy
        if isinstance(scale, ScalePolicy):
            try:
                return check_policy(self.model, scale)
            except (TypeError, ValueError) as e:
                raise RequestError(400, str(e), "matryoshka_vis_token_scale") from None
        return self.resolve_scale(scale)

    def num_visual_tokens(self, scale: int | None, image_size: tuple[int, int] | None = None) -> int:
        """Visual tokens one image costs at `scale` (for anyres, an image of `image_size`; square if None)."""
        scale = self.resolve_scale(scale)
        if self.is_anyres and image_size is None:
            side = self.model.get_vision_tower().image_size
            image_size = (side, side)
        return self.model.num_visual_tokens(scale, image_size=image_size)

    def info(self) -> dict[str, Any]:
        """What clients need to offer a budget choice: grid, valid and trained scales, the default, and the
        policy `auto` stands for (`calibrated` false: the default ladder with an uncalibrated threshold)."""
        policy = self.auto_policy
        return {
            "grid_side": self.grid_side,
            "valid_scales": self.valid_scales,
            "trained_scales": self.trained_scales,
            "default_scale": self.default_scale,
            "anyres": self.is_anyres,
            "context_length": self.context_len,
            "conv_template": self.conv_mode,
            "auto": {**policy.to_dict(), "calibrated": self.scale_policy is not None, "describe": policy.describe()},
        }

    def plan(
        self,
        prompt: str,
        image_sizes: Sequence[tuple[int, int]],
        scale: int | AutoScale | ScalePolicy | None,
        sampling: SamplingParams,
    ) -> PreparedRequest:
        """Validate a request and compute its token budget (no pixels yet); raises `RequestError` (400).
        A policy's request is budgeted at its largest rung, the most it may read."""
        budget = self.resolve_budget(scale)
        resolved = budget.ladder[-1] if isinstance(budget, ScalePolicy) else budget
        placeholders = prompt.count(DEFAULT_IMAGE_TOKEN)
        if len(image_sizes) > self.max_images:
            raise RequestError(
                400, f"{len(image_sizes)} images in one request; this server accepts at most {self.max_images}"
            )
        if len(image_sizes) != placeholders:
            raise RequestError(
                400,
                f"the prompt has {placeholders} {DEFAULT_IMAGE_TOKEN} placeholder(s) but {len(image_sizes)} image(s) "
                f"were sent; put one {DEFAULT_IMAGE_TOKEN} where each image belongs",
            )
        if sampling.max_new_tokens < 1:
            raise RequestError(
                400, f"max_new_tokens must be at least 1, got {sampling.max_new_tokens}", "max_new_tokens"
            )
        input_ids = self.generator.tokenize(prompt)
        visual = sum(self.model.num_visual_tokens(resolved, image_size=size) for size in image_sizes)
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
        return PreparedRequest(
            prompt=prompt,
            input_ids=input_ids,
            pixel_values=[],
            image_sizes=list(image_sizes),
            scale=budget,
            visual_tokens=visual,
            prompt_tokens=prompt_tokens,
            max_new_tokens=min(sampling.max_new_tokens, self.max_new_tokens_limit, room),
            sampling=sampling,
        )


@dataclass
class BudgetAnswer:
    """One prompt's answer at one budget, in a comparison of budgets."""

    scale: int
    text: str
    seconds: float
    """Wall time of this budget's `generate` call (the tower pass is shared, see `BudgetComparison`)."""
    visual_tokens: int
    prompt_tokens: int
    """Text tokens + `visual_tokens`."""
    p_first: float
    """The probability of the first answer token, the signal of the adaptive budget."""
    pictures: list[Image.Image]
    """What the model sees of each image at this budget (`llava.scale_picture`)."""


@dataclass
class BudgetComparison:
    """One prompt answered at several budgets from one pass of the vision tower."""

    encode_seconds: float
    """Wall time of the one tower pass (+ projector) every budget's answer shares."""
    answers: list[BudgetAnswer]
    """In increasing budget order."""


class InferenceEngine(CheckpointRules):
    """A loaded LLaVA/M3 model (a `Generator`), the serving rules on it, and batched generation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One generation on the model at a time: the scheduler's batches and budget comparisons (which
        # run on a request's thread) take turns rather than share the model's threads and memory.
        self._generating = threading.Lock()

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
        dtype: str | torch.dtype = "auto",
        **engine_kwargs: Any,
    ) -> InferenceEngine:
        """Load a checkpoint with `load_pretrained_model` and wrap it; `dtype` "auto" is the loader's default
        (float32 on the CPU, float16 elsewhere)."""
        from llava.mm_utils import get_model_name_from_path
        from llava.model.builder import load_pretrained_model
        from llava.model.cpu_packing import prepare_for_inference

        model_name = model_name or get_model_name_from_path(model_path)
        stored = load_checkpoint_policy(model_path)
        engine_kwargs.setdefault("scale_policy", stored.policy if stored is not None else None)
        tokenizer, model, image_processor, context_len = load_pretrained_model(
            model_path,
            model_base,
            model_name,
            load_8bit,
            load_4bit,
            device=device,
            use_flash_attn=use_flash_attn,
            torch_compile=torch_compile,
            **({} if dtype == "auto" else {"dtype": dtype}),
        )
        prepare_for_inference(model, cpu_weight_prepack)
        return cls(tokenizer, model, image_processor, context_len, model_name, **engine_kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **engine_kwargs: Any) -> InferenceEngine:
        """Load the checkpoint the serving commands' model flags name (`--model-path`, `--model-base`,
        `--model-name`, `--device`, `--conv-mode` and the loading flags)."""
        return cls.from_pretrained(
            args.model_path,
            args.model_base,
            args.model_name,
            device=args.device,
            load_8bit=args.load_8bit,
            load_4bit=args.load_4bit,
            use_flash_attn=args.use_flash_attn,
            torch_compile=args.torch_compile,
            cpu_weight_prepack=args.cpu_weight_prepack,
            dtype=args.dtype,
            conv_mode=args.conv_mode,
            **engine_kwargs,
        )

    def prepare(
        self,
        prompt: str,
        images: Sequence[Image.Image],
        scale: int | AutoScale | ScalePolicy | None,
        sampling: SamplingParams,
    ) -> PreparedRequest:
        """Validate a request (`plan`) and preprocess its images; raises `RequestError` (400) when it cannot run."""
        plan = self.plan(prompt, [image.size for image in images], scale, sampling)
        return replace(plan, pixel_values=self.generator.pixels(images))

    # -- generation -------------------------------------------------------------------------

    def run_batch(self, jobs: Sequence[Job]) -> None:
        """Generate for every job in one batch, streaming each job's chunks through its `emit`.

        One `generate` call through the shared path (`Generator.generate`): prompts left-padded, the
        batch's images encoded once, one scale and one temperature / top-p per row, and a `BatchTracker`
        that streams each row and ends it on its own terms. Jobs that asked for a policy walk its ladder
        together instead (one batch per policy). Never raises for a failed generation: every unfinished job
        then gets an "error" chunk, so a server thread can go on serving.
        """
        jobs = [job for job in jobs if not job.cancelled]
        fixed = [job for job in jobs if not isinstance(job.prepared.scale, ScalePolicy)]
        policies = dict.fromkeys(job.prepared.scale for job in jobs if isinstance(job.prepared.scale, ScalePolicy))
        with self._generating:
            if fixed:
                self._run_fixed(fixed)
            for policy in policies:
                self._run_policy([job for job in jobs if job.prepared.scale == policy], policy)

    def compare_budgets(
        self, prompt: str, images: Sequence[Image.Image], scales: Sequence[int], sampling: SamplingParams
    ) -> BudgetComparison:
        """Answer one prompt at each of `scales` (validated, increasing) from one tower pass, with the picture
        of what each budget sees (`llava.adaptive.answer_every_scale`); raises `RequestError` as `prepare` does,
        the context checked at the largest budget."""
        plan = self.plan(prompt, [image.size for image in images], scales[-1], sampling)
        batch = PromptBatch([plan.input_ids], self.generator.pixels(images), plan.image_sizes or None)
        params = replace(sampling, max_new_tokens=plan.max_new_tokens)
        with self._generating:
            encode_seconds, answers = answer_every_scale(self.generator, batch, scales, params)
        text_tokens = plan.prompt_tokens - plan.visual_tokens
        return BudgetComparison(
            encode_seconds,
            [
                BudgetAnswer(
                    scale=scale,
                    text=answer.texts[0],
                    seconds=answer.seconds,
                    visual_tokens=answer.visual_tokens[0],
                    prompt_tokens=text_tokens + answer.visual_tokens[0],
                    p_first=answer.p_first[0],
                    pictures=[scale_picture(self.generator, image, scale) for image in images],
                )
                for scale, answer in answers.items()
            ],
        )

    def _prompt_batch(self, jobs: Sequence[Job]) -> tuple[PromptBatch, list[SamplingParams]]:
        """The jobs' prompts with their images encoded once, and each row's sampling settings."""
        prepared = [job.prepared for job in jobs]
        pixels = [pixels for p in prepared for pixels in p.pixel_values]
        sizes = [size for p in prepared for size in p.image_sizes]
        batch = PromptBatch([p.input_ids for p in prepared], self.generator.encode(pixels), sizes or None)
        # The tracker ends each row at its own limit; generate runs to the largest.
        return batch, [replace(p.sampling, max_new_tokens=p.max_new_tokens) for p in prepared]

    def _end_ids(self, jobs: Sequence[Job]) -> set[int]:
        return set(self.generator.end_token_ids([stop for job in jobs for stop in job.prepared.sampling.stop]))

    def _run_fixed(self, jobs: Sequence[Job]) -> None:
        tracker = BatchTracker(jobs, self.generator.decode, self._end_ids(jobs))
        try:
            batch, params = self._prompt_batch(jobs)
            self.generator.generate(batch, [job.prepared.scale for job in jobs], params, stopping=tracker)
        except Exception as e:  # a failed batch must not take the server down
            logger.exception("generation failed for a batch of %d", len(jobs))
            tracker.fail(f"generation failed: {type(e).__name__}: {e}")
            return
        tracker.finish()

    def _run_policy(self, jobs: Sequence[Job], policy: ScalePolicy) -> None:
        """The jobs walk the policy's ladder together; each rung streams the rows it keeps through a tracker of its own."""
        end_ids = self._end_ids(jobs)
        trackers: list[BatchTracker] = []

        def make_stopping(rows: Sequence[int], answers: Sequence[AdaptiveAnswer]) -> BatchTracker:
            trackers.append(BatchTracker([jobs[row] for row in rows], self.generator.decode, end_ids, answers))
            return trackers[-1]

        try:
            batch, params = self._prompt_batch(jobs)
            answer_adaptive(self.generator, batch, policy, params, make_stopping)
        except Exception as e:  # a failed batch must not take the server down
            logger.exception("generation failed for a batch of %d with the adaptive budget", len(jobs))
            message = f"generation failed: {type(e).__name__}: {e}"
            # A job is in the tracker of the rung that kept it; the others were still walking the ladder.
            walking = [job for job in jobs if not any(job in tracker.jobs for tracker in trackers)]
            for tracker in [*trackers, BatchTracker(walking, self.generator.decode, end_ids)]:
                tracker.fail(message)
            return
        for tracker in trackers:
            tracker.finish()


class AnswerTracker:
    """One request's answer as its tokens arrive: the streamed text, and when the answer is finished.

    `step` takes each new token: an end token finishes the answer ("stop"), as does a stop string (cut
    from the text) or the request's own `max_new_tokens` ("length"); otherwise the text that is safe to
    show (`_hold_back`) goes to the job as a chunk. Our batches feed one per row (`BatchTracker`), the
    vLLM backend one per request, so both stream and stop answers the same way.
    """

    def __init__(
        self,
        job: Job,
        decode: Callable[[Sequence[int]], str],
        eos_ids: set[int],
        budget: AdaptiveAnswer | None = None,
    ) -> None:
        self.job = job
        self.budget = budget
        """For a policy's rung: the answer so far (whose last rung is this one), which the final chunk reports."""
        self.decode = decode
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.generated = 0
        self.emitted = ""
        self.done = False

    def step(self, token: int) -> None:
        if self.job.cancelled:
            self.done = True
            return
        self.generated += 1
        if token in self.eos_ids:
            self.finish("stop")
            return
        self.ids.append(token)
        text = self.decode(self.ids)
        stops = self.job.prepared.sampling.stop
        cut = first_stop(text, stops)
        if cut is not None:
            self.finish("stop", text[:cut])
        elif self.generated >= self.job.prepared.max_new_tokens:
            self.finish("length", text)
        else:
            visible = _hold_back(text, stops)
            if len(visible) > len(self.emitted) and visible.startswith(self.emitted):
                delta, self.emitted = visible[len(self.emitted) :], visible
                self._emit(GenerationChunk(text=visible, delta=delta, completion_tokens=self.generated))

    def finish(self, reason: str, text: str | None = None) -> None:
        """End the answer with `reason` ("stop" or "length"), its text the tokens so far unless given."""
        self.done = True
        text = self.decode(self.ids) if text is None else text
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        chunk = GenerationChunk(text=text, delta=delta, finish_reason=reason, completion_tokens=self.generated)
        if self.budget is not None:
            chunk.scale_used = self.budget.scale
            chunk.visual_tokens = self.budget.visual_tokens
            chunk.visual_tokens_processed = self.budget.visual_tokens_processed
        else:
            chunk.scale_used = self.job.prepared.scale
            chunk.visual_tokens = chunk.visual_tokens_processed = self.job.prepared.visual_tokens
        self._emit(chunk)

    def fail(self, message: str) -> None:
        self.done = True
        self._emit(
            GenerationChunk(text=self.emitted, finish_reason="error", error=message, completion_tokens=self.generated)
        )

    def _emit(self, chunk: GenerationChunk) -> None:
        try:
            self.job.emit(chunk)
        except Exception:  # the receiver is gone (closed event loop, broken pipe): stop this answer only
            logger.warning("dropping a request whose receiver failed", exc_info=True)
            self.job.cancel()
            self.done = True


class BatchTracker(StoppingCriteria):
    """Streams each row's answer (`AnswerTracker`) and tells `generate` which rows are finished.

    Called by `generate` after every step with the tokens so far (from `inputs_embeds` generation
    they are the new tokens only; the last column is always the newest). Finished and cancelled rows
    are reported done, so `generate` pads them and ends when every row is done. For a policy's rung,
    `budgets` holds each row's answer so far, whose final chunk reports the rung that answered.
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        decode: Callable[[Sequence[int]], str],
        eos_ids: set[int],
        budgets: Sequence[AdaptiveAnswer] | None = None,
    ) -> None:
        self.jobs = list(jobs)
        self.rows = [
            AnswerTracker(job, decode, eos_ids, budget) for job, budget in zip(jobs, budgets or [None] * len(jobs))
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, newest):
            if not row.done:
                row.step(token)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def finish(self) -> None:
        """After `generate` returned: rows that ran into the batch's token limit end with "length"."""
        for row in self.rows:
            if not row.done and not row.job.cancelled:
                row.finish("length")

    def fail(self, message: str) -> None:
        for row in self.rows:
            if not row.done:
                row.fail(message)


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
