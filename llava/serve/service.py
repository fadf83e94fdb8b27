"""`ModelService`: an engine, its batch scheduler and the request limits, as the async HTTP servers use them.

A server handler calls `prepare` (decodes images and validates in a worker thread, raising
`RequestError`), then `open_stream` (503 when the queue is full) and iterates the returned
`ChunkStream`, which is fed from the scheduler's thread. Closing the stream early (a client that
disconnected) cancels the request at the next generation step.

Also here: the command-line flags every model-serving entry point shares, declared once.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from llava.generation import add_scale_argument, default_device
from llava.serve.batcher import BatchScheduler
from llava.serve.engine import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_NEW_TOKENS_LIMIT,
    GenerationChunk,
    InferenceEngine,
    Job,
    PreparedRequest,
    SamplingParams,
)
from llava.serve.errors import RequestError
from llava.serve.media import MIB, ImagePolicy, decode_image


@dataclass(frozen=True)
class ServiceLimits:
    """What a server accepts before it decodes anything (413 / 503 beyond)."""

    max_request_bytes: int = 32 * MIB
    max_queued_requests: int = 256
    image: ImagePolicy = field(default_factory=ImagePolicy)


class LoopMailbox:
    """Hands chunks from the scheduler thread to the streams of one event loop, with few wake-ups.

    Waking an event loop from another thread costs a syscall and a GIL hand-over, and on a busy
    machine the woken thread often loses its time slice; doing it for every token of every row of
    a batch cost the generating thread a third of its time. So chunks posted while a wake-up is
    pending ride along with it, and a routine chunk wakes the loop at most every `min_interval_s`
    (the rest wait for the next wake-up, at most one decoding step later). A stream's first chunk
    and every final chunk wake it at once, so time-to-first-token and completion are not delayed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, min_interval_s: float = 0.0) -> None:
        self.loop = loop
        self.min_interval_s = min_interval_s
        self._items: deque[tuple[asyncio.Queue, GenerationChunk]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._last_wake = 0.0

    def post(self, queue: asyncio.Queue, chunk: GenerationChunk, urgent: bool = True) -> None:
        now = time.monotonic()
        with self._lock:
            self._items.append((queue, chunk))
            if self._wake_pending or (not urgent and now - self._last_wake < self.min_interval_s):
                return
            self._wake_pending = True
            self._last_wake = now
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            self._wake_pending = False
        for queue, chunk in items:
            queue.put_nowait(chunk)


class ChunkStream:
    """The chunks of one request, delivered from the scheduler thread into the event loop."""

    def __init__(self, prepared: PreparedRequest, mailbox: LoopMailbox) -> None:
        self._queue: asyncio.Queue[GenerationChunk] = asyncio.Queue()
        self._mailbox = mailbox
        self.job = Job(prepared, self._emit)
        self.finished = False
        self._started = False

    def _emit(self, chunk: GenerationChunk) -> None:
        self._mailbox.post(self._queue, chunk, urgent=chunk.done or not self._started)
        self._started = True

    async def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        """Chunks in order; those that piled up while the client was slow arrive merged into one."""
        try:
            while True:
                chunk = await self._queue.get()
                while not chunk.done and not self._queue.empty():
                    chunk = _merge(chunk, self._queue.get_nowait())
                if chunk.done:
                    self.finished = True
                yield chunk
                if chunk.done:
                    return
        finally:
            if not self.finished:
                self.job.cancel()

    async def final(self) -> GenerationChunk:
        """Wait for the last chunk (non-streaming responses)."""
        async for chunk in self:
            if chunk.done:
                return chunk
        raise RuntimeError("the stream ended without a final chunk")

    def cancel(self) -> None:
        self.job.cancel()


def _merge(earlier: GenerationChunk, later: GenerationChunk) -> GenerationChunk:
    """One chunk standing for two consecutive ones (texts are cumulative, deltas add up)."""
    return replace(later, delta=earlier.delta + later.delta)


class ModelService:
    """One model served to many concurrent clients in batches."""

    def __init__(
        self,
        engine: InferenceEngine,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        limits: ServiceLimits | None = None,
        stream_interval_s: float = 0.02,
    ) -> None:
        self.engine = engine
        self.stream_interval_s = stream_interval_s
        self.limits = limits or ServiceLimits()
        self.scheduler = BatchScheduler(engine, max_batch_size=max_batch_size, batch_wait_s=batch_wait_s)
        self._mailboxes: dict[asyncio.AbstractEventLoop, LoopMailbox] = {}

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    async def prepare(
        self, prompt: str, image_payloads: Sequence[str], scale: Any, sampling: SamplingParams
    ) -> PreparedRequest:
        """Decode the images and validate the request off the event loop; raises `RequestError`."""
        if len(image_payloads) > self.engine.max_images:
            raise RequestError(
                400,
                f"{len(image_payloads)} images in one request; this server accepts at most {self.engine.max_images}",
            )
        return await asyncio.to_thread(self._prepare, prompt, list(image_payloads), scale, sampling)

    def _prepare(self, prompt: str, payloads: list[str], scale: Any, sampling: SamplingParams) -> PreparedRequest:
        self.engine.resolve_scale(scale)  # a bad scale is reported before any image is decoded
        images = [decode_image(payload, self.limits.image) for payload in payloads]
        return self.engine.prepare(prompt, images, scale, sampling)

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Wrap the handling of a request up to `open_stream`: a batch that is forming meanwhile waits
        (briefly) for it instead of leaving without it."""
        self.scheduler.expect()
        try:
            yield
        finally:
            self.scheduler.expected_done()

    def open_stream(self, prepared: PreparedRequest) -> ChunkStream:
        """Queue a prepared request; 503 when `max_queued_requests` are already waiting or running."""
        if self.scheduler.queue_length >= self.limits.max_queued_requests:
            raise RequestError(503, f"the server is busy ({self.scheduler.queue_length} requests queued); retry later")
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = LoopMailbox(loop, self.stream_interval_s)
            self._mailboxes = {loop: mailbox}  # a service answers on one event loop
        stream = ChunkStream(prepared, mailbox)
        self.scheduler.submit(stream.job)
        return stream

    def status(self) -> dict[str, Any]:
        """The worker status the controller and the web UI read (names kept from the original)."""
        return {
            "model_names": [self.model_name],
            "speed": 1,
            "queue_length": self.scheduler.queue_length,
            "matryoshka": self.engine.info(),
            "batches": self.scheduler.stats.batches,
            "requests_generated": self.scheduler.stats.requests,
            "largest_batch": self.scheduler.stats.largest_batch,
        }


# -- command-line flags shared by model_worker, openai_api and cli ------------------------------


def add_loading_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How `load_pretrained_model` loads the checkpoint: quantisation, attention, compile, CPU packing.

    Shared by the worker, the OpenAI-style server and `llava.serve.cli`.
    """
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--use-flash-attn", action="store_true")
    parser.add_argument(
        "--torch-compile",
        action="store_true",
        help="torch.compile the vision tower and projector (first image per shape compiles)",
    )
    parser.add_argument(
        "--cpu-weight-prepack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CPU, float32: pack linear weights once for oneDNN (faster prefill and decode). Default: the "
        "layers where it pays, whenever it applies; --cpu-weight-prepack packs every layer, "
        "--no-cpu-weight-prepack none",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model-path", required=True, help="checkpoint folder or hub id")
    group.add_argument("--model-base", default=None, help="base LLM for LoRA or projector-only checkpoints")
    group.add_argument("--model-name", default=None, help="name clients use (default: from --model-path)")
    group.add_argument("--device", default=default_device(), help="cuda, mps or cpu (default: the best available)")
    add_loading_arguments(group)
    group.add_argument("--conv-mode", default=None, help="conversation template (default: the checkpoint's)")
    add_scale_argument(group, "default visual-token budget when a request names none (1/9/36/144/576)")


def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving")
    group.add_argument(
        "--limit-model-concurrency",
        type=int,
        default=8,
        help="most requests generated at once (one batch); more wait in the queue",
    )
    group.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long the first request of a batch waits for others to join",
    )
    group.add_argument(
        "--stream-interval-ms",
        type=float,
        default=20.0,
        help="stream text to clients at most this often (first and last chunks go at once)",
    )
    group.add_argument("--max-queued-requests", type=int, default=256, help="503 beyond this many queued requests")
    group.add_argument("--max-request-bytes", type=int, default=32 * MIB, help="413 for larger request bodies")
    group.add_argument("--max-image-bytes", type=int, default=10 * MIB, help="413 for larger images")
    group.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="413 for images with more pixels")
    group.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES, help="400 for more images per request")
    group.add_argument(
        "--max-new-tokens-limit",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS_LIMIT,
        help="cap on max_new_tokens / max_tokens",
    )
    group.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="fetch http(s) image URLs in requests (off: only inline base64 / data: URLs)",
    )
    group.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on the /v1 routes")


def service_from_args(args: argparse.Namespace) -> ModelService:
    """Load the model named by the flags and wrap it in a (not yet started) service."""
    if args.load_8bit and args.load_4bit:
        raise SystemExit("choose one of --load-8bit and --load-4bit")
    engine = InferenceEngine.from_args(
        args,
        max_new_tokens_limit=args.max_new_tokens_limit,
        max_images=args.max_images,
        default_scale=args.matryoshka_vis_token_scale,
    )
    limits = ServiceLimits(
        max_request_bytes=args.max_request_bytes,
        max_queued_requests=args.max_queued_requests,
        image=ImagePolicy(
            max_image_bytes=args.max_image_bytes,
            max_image_pixels=args.max_image_pixels,
            allow_remote=args.allow_remote_images,
        ),
    )
    return ModelService(
        engine,
        max_batch_size=args.limit_model_concurrency,
        batch_wait_s=args.batch_wait_ms / 1000,
        limits=limits,
        stream_interval_s=args.stream_interval_ms / 1000,
    )
