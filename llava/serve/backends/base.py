"""The interface between the servers and the engine that generates: `ServingBackend`.

The worker routes, the OpenAI router and the status and visual-token routes use a backend and nothing
else; which engine answers is the worker's `--backend`:

    hf      our own engine in this process: `ModelService` (`InferenceEngine` + batch scheduler), service.py
    vllm    an in-process vLLM engine (continuous batching, paged KV cache, tensor parallel), vllm_engine.py
    openai  an engine already running elsewhere, through its OpenAI-compatible API, openai_engine.py

Requests are checked once, here, whatever the engine: `prepare` decodes and bounds the images and the
checkpoint's `CheckpointRules` check the budget, the `<image>` placeholders and the context (for vllm
and openai the rules come from the config and tokenizer alone, `rules_from_checkpoint`). So a bad
budget is the same 400 naming the valid values, and usage counts the same prompt and visual tokens, on
every backend. A backend adds only how a prepared request becomes a stream of `GenerationChunk`s
(`open_stream`) and what it reports about itself (`status`).
"""

from __future__ import annotations

import argparse
import asyncio
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import GenerationConfig

from llava.generation import SamplingParams
from llava.mm_utils import processor_crop_size
from llava.scale_policy import AutoScale, ScalePolicy, load_checkpoint_policy
from llava.serve.engine import BudgetComparison, CheckpointRules, GenerationChunk, PreparedRequest
from llava.serve.http import MIB, RequestError
from llava.serve.media import ImageLayout, ImagePolicy, VideoPolicy, decode_image


@dataclass(frozen=True)
class ServiceLimits:
    """What a server accepts before it decodes anything (413 / 503 beyond)."""

    max_request_bytes: int = 32 * MIB
    max_queued_requests: int = 256
    image: ImagePolicy = field(default_factory=ImagePolicy)


class AnswerStream(ABC):
    """The chunks of one answer in order, the last one `done`; leaving the iteration early cancels the request."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[GenerationChunk]: ...

    async def final(self) -> GenerationChunk:
        """Wait for the last chunk (non-streaming responses)."""
        async for chunk in self:
            if chunk.done:
                return chunk
        raise RuntimeError("the stream ended without a final chunk")


class ServingBackend(ABC):
    """One model served to many concurrent clients; subclasses say which engine generates."""

    name: ClassVar[str]
    """The `--backend` value that selects it."""
    runs_policies: ClassVar[bool] = True
    """Whether it answers `"auto"`: its engine walks a policy's ladder, judging each rung's first answer token."""

    def __init__(self, rules: CheckpointRules, limits: ServiceLimits | None = None) -> None:
        self.rules = rules
        self.limits = limits or ServiceLimits()
        self.image_layout = ImageLayout(
            rules.model.config.image_aspect_ratio, processor_crop_size(rules.generator.image_processor)
        )

    @property
    def model_name(self) -> str:
        return self.rules.model_name

    async def start(self) -> None:
        """Called on the server's event loop when it starts serving (the engine is ready once the backend is built)."""

    async def stop(self) -> None:
        """Called on the server's event loop when it stops: finish or fail what is running, release the engine."""

    # -- budgets: what the routes report (a backend may serve fewer budgets than the checkpoint has) --------

    def resolve_scale(self, scale: int | None) -> int:
        """The budget a request gets (None: the default), or a 400 naming the valid values."""
        return self.rules.resolve_scale(scale)

    def resolve_budget(self, scale: int | AutoScale | None) -> int | ScalePolicy:
        """A generation request's budget: `resolve_scale`'s, or for `AUTO` the checkpoint's policy (a 400 where
        the engine cannot run one)."""
        if not isinstance(scale, AutoScale):
            return self.resolve_scale(scale)
        if not self.runs_policies:
            raise RequestError(
                400,
                f'matryoshka_vis_token_scale="auto" (the adaptive budget) needs an engine in this worker that says how '
                f"sure it is of each answer's first token (--backend hf or vllm); this worker's --backend "
                f"{self.name} serves fixed budgets only: name one of {self.info()['valid_scales']}",
                "matryoshka_vis_token_scale",
            )
        return self.rules.auto_policy

    def num_visual_tokens(self, scale: int | None, image_size: tuple[int, int] | None = None) -> int:
        return self.rules.num_visual_tokens(self.resolve_scale(scale), image_size)

    def info(self) -> dict[str, Any]:
        """The `matryoshka` block of the status and of `/v1/models`: grid, valid budgets, the default, and the
        policy "auto" stands for (None where this backend cannot run one)."""
        return {**self.rules.info(), **({} if self.runs_policies else {"auto": None})}

    # -- requests ---------------------------------------------------------------------------------------

    async def prepare(
        self, prompt: str, image_payloads: Sequence[str], scale: int | AutoScale | None, sampling: SamplingParams
    ) -> PreparedRequest:
        """Decode the images and validate the request off the event loop; raises `RequestError`."""
        self._check_image_count(image_payloads)
        return await asyncio.to_thread(self._prepare, prompt, list(image_payloads), scale, sampling)

    def _check_image_count(self, payloads: Sequence[str]) -> None:
        if len(payloads) > self.rules.max_images:
            raise RequestError(
                400, f"{len(payloads)} images in one request; this server accepts at most {self.rules.max_images}"
            )

    def _prepare(
        self, prompt: str, payloads: list[str], scale: int | AutoScale | None, sampling: SamplingParams
    ) -> PreparedRequest:
        budget = self.resolve_budget(scale)  # a bad budget is reported before any image is decoded
        return self.build_request(prompt, self._decode(payloads), budget, sampling)

    def _decode(self, payloads: Sequence[str]) -> list[Image.Image]:
        return [decode_image(payload, self.limits.image, self.image_layout) for payload in payloads]

    async def compare_budgets(
        self, prompt: str, image_payloads: Sequence[str], scales: Sequence[int] | None, sampling: SamplingParams
    ) -> BudgetComparison:
        """One prompt answered at each budget of `scales` (None: the trained ones) from one tower pass, with the
        picture of what each sees; raises `RequestError` for what `prepare` refuses. Our own engine only."""
        raise RequestError(
            400,
            f"comparing budgets needs our own engine (--backend hf), which answers every budget from one pass of "
            f"the vision tower; this worker's --backend {self.name} answers one budget per request",
        )

    def build_request(
        self, prompt: str, images: list[Image.Image], scale: int | ScalePolicy, sampling: SamplingParams
    ) -> PreparedRequest:
        """The validated request with what this backend's engine takes: by default the images themselves."""
        return replace(self.rules.plan(prompt, [image.size for image in images], scale, sampling), images=images)

    def admission(self) -> AbstractContextManager[None]:
        """Wraps a route's handling of a request up to `open_stream` (our batcher waits for such requests)."""
        return nullcontext()

    @abstractmethod
    async def open_stream(self, prepared: PreparedRequest) -> AnswerStream:
        """Start generating; 503 when `max_queued_requests` are already waiting or running."""

    @property
    @abstractmethod
    def queue_length(self) -> int:
        """Requests waiting plus requests being generated (what the controller balances on)."""

    def status(self) -> dict[str, Any]:
        """The worker status the controller and the web UI read (names kept from the original)."""
        return {
            "model_names": [self.model_name],
            "speed": 1,
            "queue_length": self.queue_length,
            "matryoshka": self.info(),
            "backend": self.name,
            **self.engine_status(),
        }

    def engine_status(self) -> dict[str, Any]:
        """What this backend adds to the status (counters, where its engine runs)."""
        return {}

    def check_room(self) -> None:
        if self.queue_length >= self.limits.max_queued_requests:
            raise RequestError(503, f"the server is busy ({self.queue_length} requests queued); retry later")


class PulledStream(AnswerStream):
    """An answer an async generator produces on the event loop as the client reads it.

    Closing the stream (the client left, or its non-streamed wait was cancelled) closes the generator,
    which cancels the request in its engine.
    """

    def __init__(
        self, chunks: AsyncGenerator[GenerationChunk, None], on_close: Callable[[PulledStream], None] | None = None
    ) -> None:
        self._chunks = chunks
        self._on_close = on_close

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        try:
            async for chunk in self._chunks:
                yield chunk
                if chunk.done:
                    return
        finally:
            await self._chunks.aclose()
            if self._on_close is not None:
                self._on_close(self)


@dataclass
class EngineStats:
    requests: int = 0
    """Answers started."""
    cancelled: int = 0
    """Answers whose client went away before they were complete."""


class EngineBackend(ServingBackend):
    """A backend whose engine schedules requests itself (vLLM, a remote server): every request goes to the
    engine at once, and each answer is pulled from it as the client reads it."""

    def __init__(self, rules: CheckpointRules, limits: ServiceLimits | None = None) -> None:
        super().__init__(rules, limits)
        self.stats = EngineStats()
        # Streams not yet read to their end or closed; one dropped unread leaves with its last reference.
        self._open: weakref.WeakSet[PulledStream] = weakref.WeakSet()

    @property
    def queue_length(self) -> int:
        return len(self._open)

    async def open_stream(self, prepared: PreparedRequest) -> AnswerStream:
        self.check_room()
        chunks = await self.start_answer(prepared)
        stream = PulledStream(self._tracked(chunks), on_close=self._open.discard)
        self._open.add(stream)
        self.stats.requests += 1
        return stream

    async def _tracked(self, chunks: AsyncGenerator[GenerationChunk, None]) -> AsyncGenerator[GenerationChunk, None]:
        finished = False
        try:
            async for chunk in chunks:
                finished = chunk.done
                yield chunk
        finally:
            await chunks.aclose()
            if not finished:
                self.stats.cancelled += 1

    @abstractmethod
    async def start_answer(self, prepared: PreparedRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Hand the request to the engine and return its chunks; a request the engine refuses raises
        `RequestError` here, before any chunk, so the client gets the engine's 4xx."""

    def engine_status(self) -> dict[str, Any]:
        return {"requests_generated": self.stats.requests, "requests_cancelled": self.stats.cancelled}


def rules_from_checkpoint(
    model_path: str, model_name: str, context_len: int | None = None, **rules_kwargs: Any
) -> CheckpointRules:
    """The serving rules of a checkpoint without its weights, for backends whose engine holds the weights.

    Config, tokenizer and image processor are read as `load_pretrained_model` reads them; the model is
    built on the meta device, where the tower's shape and the config answer every question the rules ask
    (grid, valid budgets, visual tokens per image) and no memory is spent on weights.
    `context_len` is the engine's (vLLM's `max_model_len`); None: the checkpoint's.
    """
    from llava.model import LLAVA_MODEL_CLASSES
    from llava.model.builder import add_image_tokens, context_length, load_image_processor, read_checkpoint_config
    from llava.model.tokenizer import load_tokenizer

    stored = load_checkpoint_policy(model_path)
    rules_kwargs.setdefault("scale_policy", stored.policy if stored is not None else None)
    source = read_checkpoint_config(model_path)
    if not source.is_llava:
        raise ValueError(
            f"{model_path} is a plain language model ({source.config.model_type}); the M3 servers serve "
            f"LLaVA/M3 checkpoints ({sorted(LLAVA_MODEL_CLASSES)})"
        )
    config = source.config
    with torch.device("meta"):
        model = LLAVA_MODEL_CLASSES[config.model_type][1](config)
    try:  # the end-of-sequence ids the checkpoint generates with, as `from_pretrained` reads them
        model.generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:
        pass  # no generation_config.json: the config's own ids stand
    tokenizer = load_tokenizer(model_path)
    add_image_tokens(tokenizer, model)
    image_processor = load_image_processor(model_path, config)
    return CheckpointRules(
        tokenizer, model, image_processor, context_len or context_length(config), model_name, **rules_kwargs
    )


def limits_from_args(args: argparse.Namespace) -> ServiceLimits:
    """The request limits the serving flags set (`--max-request-bytes`, `--max-image-pixels`, ...)."""
    return ServiceLimits(
        max_request_bytes=args.max_request_bytes,
        max_queued_requests=args.max_queued_requests,
        image=ImagePolicy(
            max_image_bytes=args.max_image_bytes,
            max_image_pixels=args.max_image_pixels,
            allow_remote=args.allow_remote_images,
            video=VideoPolicy.from_args(args),
        ),
    )


def rules_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `CheckpointRules` serving settings the flags set (besides `--conv-mode`): limits, the default budget."""
    return {
        "max_new_tokens_limit": args.max_new_tokens_limit,
        "max_images": args.max_images,
        "default_scale": args.matryoshka_vis_token_scale,
    }
