"""How concurrent requests become batches, and how their chunks reach the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from llava.serve.engine import GenerationChunk, InferenceEngine, Job, SamplingParams
from llava.serve.service import BatchScheduler, LoopMailbox

PROMPT = "USER: <image>\nWhat is in the image? ASSISTANT:"


@pytest.fixture(scope="module")
def engine(tiny_llava_pad: Path) -> InferenceEngine:
    return InferenceEngine.from_pretrained(str(tiny_llava_pad), device="cpu")


def job(engine: InferenceEngine, scale: int, done: threading.Event, sizes: list[int]) -> Job:
    prepared = engine.prepare(PROMPT, [Image.new("RGB", (40, 40))], scale, SamplingParams(0.0, 1.0, 3))

    def emit(chunk: GenerationChunk) -> None:
        if chunk.done:
            sizes.append(chunk.completion_tokens)
            done.set()

    return Job(prepared, emit)


def test_a_forming_batch_waits_for_requests_still_being_prepared(engine: InferenceEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch_size=8, batch_wait_s=0.001, max_wait_s=2.0)
    scheduler.start()
    try:
        finished = [threading.Event() for _ in range(3)]
        tokens: list[int] = []
        for _ in range(2):
            scheduler.expect()  # two more requests are on their way (images still decoding)
        scheduler.submit(job(engine, 9, finished[0], tokens))
        time.sleep(0.1)  # far longer than batch_wait_s
        for i, scale in ((1, 576), (2, 1)):
            scheduler.submit(job(engine, scale, finished[i], tokens))
            scheduler.expected_done()
        assert all(event.wait(30) for event in finished)
    finally:
        scheduler.stop()  # joins the thread, so the stats below are final
    assert scheduler.stats.batches == 1 and scheduler.stats.largest_batch == 3  # mixed scales, one batch


def test_without_announcements_a_batch_leaves_after_batch_wait(engine: InferenceEngine) -> None:
    scheduler = BatchScheduler(engine, max_batch_size=8, batch_wait_s=0.001, max_wait_s=2.0)
    scheduler.start()
    try:
        finished = [threading.Event() for _ in range(2)]
        tokens: list[int] = []
        scheduler.submit(job(engine, 9, finished[0], tokens))
        assert finished[0].wait(30)
        scheduler.submit(job(engine, 9, finished[1], tokens))
        assert finished[1].wait(30)
    finally:
        scheduler.stop()
    assert scheduler.stats.batches == 2 and scheduler.stats.largest_batch == 1
    assert scheduler.queue_length == 0


def test_the_mailbox_wakes_the_loop_for_first_and_last_chunks_and_batches_the_rest() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        loop = asyncio.get_running_loop()
        mailbox = LoopMailbox(loop, min_interval_s=60.0)
        queue: asyncio.Queue[GenerationChunk] = asyncio.Queue()

        def producer() -> None:
            mailbox.post(queue, GenerationChunk("a", "a"), urgent=True)
            time.sleep(0.05)
            mailbox.post(queue, GenerationChunk("ab", "b"), urgent=False)
            mailbox.post(queue, GenerationChunk("abc", "c"), urgent=False)

        await asyncio.to_thread(producer)
        await asyncio.sleep(0.05)
        after_routine = [queue.get_nowait().text for _ in range(queue.qsize())]
        mailbox.post(queue, GenerationChunk("abcd", "d", finish_reason="stop"), urgent=True)
        await asyncio.sleep(0.05)
        after_final = [queue.get_nowait().text for _ in range(queue.qsize())]
        return after_routine, after_final

    after_routine, after_final = asyncio.run(scenario())
    assert after_routine == ["a"]  # the routine chunks wait for the next wake-up...
    assert after_final == ["ab", "abc", "abcd"]  # ...which the final chunk brings, in order
