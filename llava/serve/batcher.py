"""`BatchScheduler`: one thread that serves concurrent requests in batches instead of one at a time.

Requests wait in a queue; the thread takes the first, gathers whatever else arrives within
`batch_wait_s` up to `max_batch_size`, and runs them as one `InferenceEngine.run_batch` (mixed
scales and sampling settings in one batch). While a batch runs, new requests queue for the next.
Requests the server has already received but is still decoding (announced with `expect`) are
waited for up to `max_wait_s`: without that, clients that send together were split into small
batches just because their images were decoded one after another.
Each scheduler owns its queue, thread and counters; nothing is shared between schedulers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from llava.serve.engine import GenerationChunk, InferenceEngine, Job

logger = logging.getLogger(__name__)


@dataclass
class SchedulerStats:
    batches: int = 0
    requests: int = 0
    largest_batch: int = 0


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
            return self._queue.qsize() + self._running

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

    def _gather(self, first: Job) -> list[Job]:
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
        return [job for job in batch if not job.cancelled]
