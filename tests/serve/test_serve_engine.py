"""The serving engine: request validation, token budgeting, and batched generation that matches one-at-a-time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava.generation import PerRowSampling, SamplingParams, top_p_filter
from llava.scale_policy import AUTO, ScalePolicy
from llava.serve.engine import GenerationChunk, InferenceEngine, Job
from llava.serve.http import RequestError

PROMPT = "USER: <image>\nWhat is in the image? ASSISTANT:"
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def engine(tiny_llava_pad: Path) -> InferenceEngine:
    return InferenceEngine.from_pretrained(str(tiny_llava_pad), device="cpu", max_new_tokens_limit=4096)


@pytest.fixture(scope="module")
def anyres_engine(tiny_llava_anyres: Path) -> InferenceEngine:
    return InferenceEngine.from_pretrained(str(tiny_llava_anyres), device="cpu")


def image(size: tuple[int, int] = (60, 40), color: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    return Image.new("RGB", size, color)


def run(engine: InferenceEngine, *prepared) -> list[list[GenerationChunk]]:
    """Run prepared requests as one batch; the chunks each one received."""
    received: list[list[GenerationChunk]] = [[] for _ in prepared]
    engine.run_batch([Job(p, received[i].append) for i, p in enumerate(prepared)])
    return received


def test_max_new_tokens_is_budgeted_against_the_visual_tokens_at_the_requested_scale(engine: InferenceEngine) -> None:
    big = SamplingParams(max_new_tokens=100_000)
    full = engine.prepare(PROMPT, [image()], 576, big)
    small = engine.prepare(PROMPT, [image()], 9, big)
    assert (full.visual_tokens, small.visual_tokens) == (576, 9)
    assert full.prompt_tokens - small.prompt_tokens == 576 - 9
    assert full.max_new_tokens == engine.context_len - full.prompt_tokens
    assert small.max_new_tokens == engine.context_len - small.prompt_tokens
    assert engine.prepare(PROMPT, [image()], 9, SamplingParams(max_new_tokens=7)).max_new_tokens == 7


def test_anyres_counts_the_crops_and_refuses_a_prompt_over_the_context(anyres_engine: InferenceEngine) -> None:
    square = image((96, 96))
    prepared = anyres_engine.prepare(PROMPT, [square], 9, GREEDY)
    assert prepared.visual_tokens == anyres_engine.model.num_visual_tokens(9, image_size=(96, 96)) == 51
    # 576 per crop on a 2x2 grid plus the base image is 2928 tokens: more than the 2048 context.
    with pytest.raises(RequestError) as info:
        anyres_engine.prepare(PROMPT, [square], 576, GREEDY)
    assert info.value.status == 400 and "context length" in info.value.message and "2928 visual" in info.value.message


@pytest.mark.parametrize(
    ("prompt", "images", "scale", "expected"),
    [
        (PROMPT, 1, 10, "valid values: [1, 4, 9, 16, 36, 64, 144, 576]"),
        (PROMPT, 1, "36", "must be an int, got str '36'"),
        (PROMPT, 1, [9, 36], "must be an int, got list"),
        ("USER: hi ASSISTANT:", 1, 9, "0 <image> placeholder(s) but 1 image(s)"),
        (PROMPT, 2, 9, "1 <image> placeholder(s) but 2 image(s)"),
        (PROMPT, 0, 9, "1 <image> placeholder(s) but 0 image(s)"),
        ("word " * 2100, 0, 9, "context length of 2048"),
    ],
)
def test_bad_requests_are_refused_with_400(engine: InferenceEngine, prompt, images, scale, expected) -> None:
    with pytest.raises(RequestError) as info:
        engine.prepare(prompt, [image()] * images, scale, GREEDY)
    assert info.value.status == 400
    assert expected in info.value.message


def test_a_mixed_scale_batch_gives_what_each_request_gives_alone(engine: InferenceEngine) -> None:
    requests = [
        engine.prepare(PROMPT, [image()], 9, GREEDY),
        engine.prepare(PROMPT, [image((40, 70), (20, 90, 200))], 576, GREEDY),
        engine.prepare("USER: Say something. ASSISTANT:", [], 36, GREEDY),
        engine.prepare(PROMPT, [image()], 1, GREEDY),
    ]
    alone = [run(engine, p)[0][-1] for p in requests]
    batched = [chunks[-1] for chunks in run(engine, *requests)]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert all(c.finish_reason in ("length", "stop") for c in batched)
    # The scale changes what the model sees, so the same image at 9 and at 1 token is answered differently.
    assert alone[0].text != alone[3].text


def test_chunks_stream_deltas_that_add_up_to_the_text(engine: InferenceEngine) -> None:
    (chunks,) = run(engine, engine.prepare(PROMPT, [image()], 9, SamplingParams(temperature=0.0, max_new_tokens=12)))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert "".join(c.delta for c in chunks) == chunks[-1].text
    assert chunks[-1].completion_tokens == 12 and chunks[-1].finish_reason == "length"


def test_each_row_stops_at_its_own_limit_and_stop_string(engine: InferenceEngine) -> None:
    (reference,) = run(engine, engine.prepare(PROMPT, [image()], 9, SamplingParams(temperature=0.0, max_new_tokens=10)))
    text = reference[-1].text
    stop = text[3:6]
    assert stop and text.find(stop) == 3
    short = engine.prepare(PROMPT, [image()], 9, SamplingParams(temperature=0.0, max_new_tokens=2))
    stopped = engine.prepare(PROMPT, [image()], 9, SamplingParams(temperature=0.0, max_new_tokens=10, stop=(stop,)))
    long = engine.prepare(PROMPT, [image()], 9, SamplingParams(temperature=0.0, max_new_tokens=10))
    short_chunks, stop_chunks, long_chunks = run(engine, short, stopped, long)
    assert short_chunks[-1].completion_tokens == 2 and short_chunks[-1].finish_reason == "length"
    assert stop_chunks[-1].text == text[:3] and stop_chunks[-1].finish_reason == "stop"
    assert stop not in "".join(c.delta for c in stop_chunks)
    assert long_chunks[-1].text == text


def test_sampled_and_greedy_rows_share_a_batch(engine: InferenceEngine) -> None:
    greedy = engine.prepare(PROMPT, [image()], 9, GREEDY)
    sampled = engine.prepare(PROMPT, [image()], 9, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6))
    (alone,) = run(engine, greedy)
    together = run(engine, greedy, sampled)
    assert together[0][-1].text == alone[-1].text
    # The sampled row may draw the end-of-sequence token before its 6-token limit.
    assert together[1][-1].finish_reason in ("length", "stop")


def test_per_row_sampling_keeps_the_argmax_for_greedy_rows_and_the_nucleus_for_others() -> None:
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.6, 0.2, 0.1]]))
    filtered = top_p_filter(scores, torch.tensor([0.7, 0.5]))
    assert torch.isfinite(filtered).tolist() == [[True, True, False, False], [False, True, False, False]]
    processed = PerRowSampling([SamplingParams(temperature=0.0), SamplingParams(temperature=2.0, top_p=1.0)])(
        torch.zeros(2, 1, dtype=torch.long), scores
    )
    assert torch.isfinite(processed[0]).tolist() == [True, False, False, False]
    torch.testing.assert_close(processed[1], scores[1] / 2)


def test_per_row_sampling_reads_vanishing_temperatures_and_top_p_as_greedy_and_top_1() -> None:
    """What a CLI or library caller can pass (the HTTP edge normalises these itself): no NaN reaches sampling."""
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.6, 0.2, 0.1]]))
    processed = PerRowSampling(
        [SamplingParams(temperature=1e-45, top_p=0.9), SamplingParams(temperature=1.0, top_p=0.0)]
    )(torch.zeros(2, 1, dtype=torch.long), scores)
    assert not torch.isnan(processed).any()
    assert torch.isfinite(processed).tolist() == [[True, False, False, False], [False, True, False, False]]


def test_a_failed_batch_reports_an_error_and_the_engine_keeps_working(engine: InferenceEngine) -> None:
    broken = engine.prepare(PROMPT, [image()], 9, GREEDY)
    broken.pixel_values = [torch.zeros(3, 7, 7)]  # not the tower's input size: generate raises
    (chunks,) = run(engine, broken)
    assert chunks[-1].finish_reason == "error" and "image crops must have shape" in chunks[-1].error
    (after,) = run(engine, engine.prepare(PROMPT, [image()], 9, GREEDY))
    assert after[-1].finish_reason == "length"


def test_a_cancelled_job_is_not_generated(engine: InferenceEngine) -> None:
    received: list[GenerationChunk] = []
    job = Job(engine.prepare(PROMPT, [image()], 9, GREEDY), received.append)
    job.cancel()
    engine.run_batch([job])
    assert received == []


def test_the_server_default_scale_applies_when_a_request_names_none(tiny_llava_pad: Path) -> None:
    engine = InferenceEngine.from_pretrained(str(tiny_llava_pad), device="cpu", default_scale=36)
    assert engine.prepare(PROMPT, [image()], None, GREEDY).visual_tokens == 36
    with pytest.raises(ValueError, match="valid values"):
        InferenceEngine.from_pretrained(str(tiny_llava_pad), device="cpu", default_scale=35)


def test_policy_requests_stream_only_the_answering_rung_and_say_which(engine: InferenceEngine) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    to_576 = ScalePolicy((1, 9, 576), (1.0, 1.0, 0.0))  # nothing kept below 576
    at_1 = ScalePolicy.uniform((1, 9, 576), 0.0)  # everything kept at 1
    requests = [
        engine.prepare(PROMPT, [image()], to_576, params),
        engine.prepare(PROMPT, [image((40, 70), (20, 90, 200))], 9, params),
        engine.prepare(PROMPT, [image()], at_1, params),
    ]
    # A policy request is budgeted at its largest rung, the most it may read.
    assert requests[0].visual_tokens == 576 and requests[0].scale == to_576
    walked, fixed, kept = run(engine, *requests)
    (alone_576,) = run(engine, engine.prepare(PROMPT, [image()], 576, params))
    (alone_1,) = run(engine, engine.prepare(PROMPT, [image()], 1, params))
    assert walked[-1].text == alone_576[-1].text and kept[-1].text == alone_1[-1].text
    assert "".join(c.delta for c in walked) == walked[-1].text  # no text of the rungs 1 and 9 was streamed
    assert (walked[-1].scale_used, walked[-1].visual_tokens, walked[-1].visual_tokens_processed) == (576, 576, 586)
    assert (kept[-1].scale_used, kept[-1].visual_tokens_processed) == (1, 1)
    assert (fixed[-1].scale_used, fixed[-1].visual_tokens, fixed[-1].visual_tokens_processed) == (9, 9, 9)


def test_auto_is_the_checkpoint_policy_and_a_bad_policy_a_400(engine: InferenceEngine) -> None:
    assert engine.resolve_budget(AUTO).ladder == (1, 9, 36, 144, 576)  # no policy file: the uncalibrated default
    assert engine.resolve_budget(None) == 576
    with pytest.raises(RequestError) as info:
        engine.prepare(PROMPT, [image()], ScalePolicy.uniform((1, 100), 0.5), GREEDY)
    assert info.value.status == 400 and "valid values" in info.value.message


def test_a_failing_policy_batch_reports_an_error_to_every_job(engine: InferenceEngine) -> None:
    request = engine.prepare(PROMPT, [image()], ScalePolicy.uniform((1, 9), 1.0), GREEDY)
    broken = replace(request, pixel_values=[torch.zeros(3, 7, 7)])  # not the tower's input size
    (chunks,) = run(engine, broken)
    assert chunks[-1].finish_reason == "error" and "image crops must have shape" in chunks[-1].error
