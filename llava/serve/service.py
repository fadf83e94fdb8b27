"""Serving one model to many clients: the batch scheduler and `ModelService`, the async face the servers use.

`BatchScheduler` is one thread that serves concurrent requests in batches instead of one at a time.
Requests wait in a queue; the thread takes the first, gathers whatever else arrives within
`batch_wait_s` up to `max_batch_size`, and runs them as one `InferenceEngine.run_batch` (mixed
scales and sampling settings in one batch). While a batch runs, new requests queue for the next.
Requests the server has already received but is still decoding (announced with `expect`) are
waited for up to `max_wait_s`: without that, clients that send together were split into small
batches just because their images were decoded one after another.

`ModelService` is the `hf` serving backend (see backends/base.py): a route validates a request with
`prepare` (decodes images and validates in a worker thread, raising `RequestError`), queues it with
`open_stream` (503 when the queue is full) and iterates the returned `ChunkStream`, which is fed from
the scheduler's thread. Closing the stream early (a client that disconnected) cancels the request at
the next generation step.
Each service owns its scheduler, queue, thread and counters; nothing is shared between services.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from llava.generation import SamplingParams
from llava.scale_policy import ScalePolicy
from llava.serve.backends.base import (
    AnswerStream,
    ServiceLimits,
    ServingBackend,
    limits_from_args,
    rules_kwargs_from_args,
)
from llava.serve.engine import BudgetComparison, GenerationChunk, InferenceEngine, Job, PreparedRequest

logger = logging.getLogger(__name__)


@dataclass
class SchedulerStats:
    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    cancelled: int = 0
    """Requests whose client went away before their answer was complete."""


class BatchScheduler:
    """Feeds an engine from a queue, `max_batch_size` requests at a time."""

    def __init__(
        self,
        engine: InferenceEngine,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        max_wait_s: float = 0.05,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_wait_s = max(max_wait_s, batch_wait_s)
        self.stats = SchedulerStats()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._running = 0
        self._outside = 0
        self._incoming = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llava-batch-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running batch, then stop; requests still queued are failed, not lost silently."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.emit(GenerationChunk(text="", finish_reason="error", error="the server is shutting down"))

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def expect(self) -> None:
        """Announce a request that is being prepared and will probably be submitted soon."""
        with self._lock:
            self._incoming += 1

    def expected_done(self) -> None:
        """The announced request was submitted or refused."""
        with self._lock:
            self._incoming -= 1

    @property
    def queue_length(self) -> int:
        """Requests waiting plus requests being generated (what the controller balances on)."""
        with self._lock:
            return self._queue.qsize() + self._running + self._outside

    @contextmanager
    def outside_work(self) -> Iterator[None]:
        """Count work on the engine that does not go through the queue (a budget comparison) as a request."""
        with self._lock:
            self._outside += 1
        try:
            yield
        finally:
            with self._lock:
                self._outside -= 1

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = self._gather(first)
            with self._lock:
                self._running = len(batch)
            try:
                self.engine.run_batch(batch)
            finally:
                with self._lock:
                    self._running = 0
                self.stats.batches += 1
                self.stats.requests += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                self.stats.cancelled += sum(job.cancelled for job in batch)

    def _gather(self, first: Job) -> list[Job]:
        """The first job and those that join it (see the module doc), less those cancelled while queued."""
        batch = [first]
        start = time.monotonic()
        while len(batch) < self.max_batch_size:
            waited = time.monotonic() - start
            with self._lock:
                incoming = self._incoming
            if waited >= self.batch_wait_s and (incoming == 0 or waited >= self.max_wait_s):
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except queue.Empty:
                    break
            try:
                batch.append(self._queue.get(timeout=0.002))
            except queue.Empty:
                continue
        live = [job for job in batch if not job.cancelled]
        self.stats.cancelled += len(batch) - len(live)
        return live


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

    def post(self, inbox: asyncio.Queue, chunk: GenerationChunk, urgent: bool = True) -> None:
        now = time.monotonic()
        with self._lock:
            self._items.append((inbox, chunk))
            if self._wake_pending or (not urgent and now - self._last_wake < self.min_interval_s):
                return
            self._wake_pending = True
            self._last_wake = now
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, deque()
            self._wake_pending = False
        for inbox, chunk in items:
            inbox.put_nowait(chunk)


class ChunkStream(AnswerStream):
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

    def cancel(self) -> None:
        self.job.cancel()


def _merge(earlier: GenerationChunk, later: GenerationChunk) -> GenerationChunk:
    """One chunk standing for two consecutive ones (texts are cumulative, deltas add up)."""
    return replace(later, delta=earlier.delta + later.delta)


class ModelService(ServingBackend):
    """The `hf` backend: our own engine (`InferenceEngine`) in this process, fed in batches by a scheduler."""

    name = "hf"

    def __init__(
        self,
        engine: InferenceEngine,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        limits: ServiceLimits | None = None,
        stream_interval_s: float = 0.02,
    ) -> None:
        super().__init__(engine, limits)
        self.engine = engine
        self.stream_interval_s = stream_interval_s
        self.scheduler = BatchScheduler(engine, max_batch_size=max_batch_size, batch_wait_s=batch_wait_s)
        self._mailboxes: dict[asyncio.AbstractEventLoop, LoopMailbox] = {}

    async def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)  # it finishes the running batch first

    def build_request(
        self, prompt: str, images: list[Image.Image], scale: int | ScalePolicy, sampling: SamplingParams
    ) -> PreparedRequest:
        return self.engine.prepare(prompt, images, scale, sampling)

    async def compare_budgets(
        self, prompt: str, image_payloads: Sequence[str], scales: Sequence[int] | None, sampling: SamplingParams
    ) -> BudgetComparison:
        """`InferenceEngine.compare_budgets` off the event loop, the budgets checked before any image is decoded.
        It waits for the running batch and holds the model while it runs, so it counts as a queued request."""
        self._check_image_count(image_payloads)
        budgets = sorted({self.resolve_scale(scale) for scale in scales or self.engine.trained_scales})
        self.check_room()
        with self.scheduler.outside_work():
            return await asyncio.to_thread(self._compare, prompt, list(image_payloads), budgets, sampling)

    def _compare(
        self, prompt: str, payloads: list[str], scales: list[int], sampling: SamplingParams
    ) -> BudgetComparison:
        return self.engine.compare_budgets(prompt, self._decode(payloads), scales, sampling)

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Wrap the handling of a request up to `open_stream`: a batch that is forming meanwhile waits
        (briefly) for it instead of leaving without it."""
        self.scheduler.expect()
        try:
            yield
        finally:
            self.scheduler.expected_done()

    @property
    def queue_length(self) -> int:
        return self.scheduler.queue_length

    async def open_stream(self, prepared: PreparedRequest) -> ChunkStream:
        """Queue a prepared request; 503 when `max_queued_requests` are already waiting or running."""
        self.check_room()
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = LoopMailbox(loop, self.stream_interval_s)
            self._mailboxes = {loop: mailbox}  # a service answers on one event loop
        stream = ChunkStream(prepared, mailbox)
        self.scheduler.submit(stream.job)
        return stream

    def engine_status(self) -> dict[str, Any]:
        return {
            "batches": self.scheduler.stats.batches,
            "requests_generated": self.scheduler.stats.requests,
            "largest_batch": self.scheduler.stats.largest_batch,
            "requests_cancelled": self.scheduler.stats.cancelled,
        }


def service_from_args(args: argparse.Namespace) -> ModelService:
    """Load the model named by the flags and wrap it in a (not yet started) service."""
    if args.load_8bit and args.load_4bit:
        raise SystemExit("choose one of --load-8bit and --load-4bit")
    engine = InferenceEngine.from_args(args, **rules_kwargs_from_args(args))
    return ModelService(
        engine,
        max_batch_size=args.limit_model_concurrency,
        batch_wait_s=args.batch_wait_ms / 1000,
        limits=limits_from_args(args),
        stream_interval_s=args.stream_interval_ms / 1000,
    )
