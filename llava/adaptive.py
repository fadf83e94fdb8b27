"""Answer each request with the fewest visual tokens that suffice: the ladder walk of a `ScalePolicy`.

    encode every image once (vision tower + projector)
    for each rung of the ladder, with the rows not answered yet, in one batch:
        `generate` at the rung's budget; after the first step (the prefill) each row's p_first, the
        probability of its greedy first answer token, decides: a row whose p_first clears the rung's
        threshold goes on decoding exactly as a fixed-budget call would; the others stop there and move
        on to the next rung together.

A rung that is not kept costs its prefill (plus one sampled token); only the kept rung decodes the
answer, so greedy answers are the fixed budget's answers token for token. The tower runs once whatever
the number of rungs tried: every rung pools the same encoding. While the kept rows decode, the rows a
rung did not keep stay in its batch as finished (padded) rows; a separate probe call per rung would
drop them, at the price of a second prefill for every kept row, which costs more for short answers.

Also here, for the tools that show the Matryoshka trade-off: `answer_every_scale` (one tower pass, the
answer and wall time at each budget) and `resolve_budget` (turn `--matryoshka_vis_token_scale auto` into
the checkpoint's policy).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from llava.constants import IMAGE_TOKEN_INDEX
from llava.generation import Generator, PromptBatch, SamplingParams, StopStrings
from llava.model.llava_arch import EncodedImages
from llava.model.matryoshka import TRAINED_SCALES
from llava.scale_policy import AutoScale, ScalePolicy, load_checkpoint_policy

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.9
"""The one threshold of a checkpoint's policy when it has no calibrated `matryoshka_policy.json`."""

StoppingFactory = Callable[[Sequence[int], Sequence["AdaptiveAnswer"]], StoppingCriteria]
"""`make_stopping(rows, answers)`: what ends the rows a rung keeps (their batch indices, in order), given their
answers so far (the rung that is answering is the last in each one's `rungs`)."""


@dataclass
class AdaptiveAnswer:
    """One row's answer and the rungs it took to get there."""

    text: str = ""
    rungs: list[int] = field(default_factory=list)
    """Budgets tried, in order; the last one answered."""
    p_first: list[float] = field(default_factory=list)
    """The signal at each tried rung."""
    tokens: list[int] = field(default_factory=list)
    """Visual tokens the row's images cost at each tried rung (anyres-aware)."""

    @property
    def scale(self) -> int:
        """The budget that answered."""
        return self.rungs[-1]

    @property
    def visual_tokens(self) -> int:
        """Visual tokens of the answering rung."""
        return self.tokens[-1]

    @property
    def visual_tokens_processed(self) -> int:
        """Visual tokens read over every rung tried: what the answer really cost."""
        return sum(self.tokens)

    def metadata(self) -> dict[str, Any]:
        """The record answer lines and API responses carry."""
        return {
            "scale_used": self.scale,
            "rungs": list(self.rungs),
            "p_first": [round(p, 6) for p in self.p_first],
            "visual_tokens": self.visual_tokens,
            "visual_tokens_processed": self.visual_tokens_processed,
        }


@dataclass
class ScaleAnswers:
    """A batch answered at one budget: texts, p_first and visual tokens per row, and the wall time of the call."""

    scale: int
    texts: list[str]
    p_first: list[float]
    visual_tokens: list[int]
    seconds: float


class FirstTokenConfidence(LogitsProcessor):
    """Records p_first: at the first generated position, each row's probability of its most likely token.

    Reads the scores before any sampling setting and leaves them unchanged (an observer of
    `Generator.generate`); with beam search, the first of each row's beams speaks for the row.
    """

    def __init__(self, num_beams: int = 1) -> None:
        self.num_beams = num_beams
        self.p: torch.Tensor | None = None
        """(B,) on the CPU, once the first step ran."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.p is None:
            self.p = scores[:: self.num_beams].float().softmax(dim=-1).amax(dim=-1).cpu()
        return scores


class RungGate(StoppingCriteria):
    """Ends, after the first step, the rows whose p_first does not clear their threshold; leaves the rows it keeps
    to the criteria `make_stopping(kept rows, p_first of every row)` builds for them (stop strings, streaming
    trackers, token limits)."""

    def __init__(
        self,
        confidence: FirstTokenConfidence,
        thresholds: torch.Tensor,
        make_stopping: Callable[[list[int], list[float]], StoppingCriteria],
    ) -> None:
        self.confidence = confidence
        self.thresholds = thresholds
        self.make_stopping = make_stopping
        self.kept: list[int] | None = None
        self.inner: StoppingCriteria | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self.kept is None:
            if self.confidence.p is None:
                raise RuntimeError("RungGate needs its FirstTokenConfidence among the generate call's observers")
            self.kept = (self.confidence.p > self.thresholds).nonzero().flatten().tolist()
            self.inner = self.make_stopping(self.kept, self.confidence.p.tolist())
        done = torch.ones(input_ids.shape[0], dtype=torch.bool)
        if self.kept:
            rows = torch.tensor(self.kept, device=input_ids.device)
            done[self.kept] = self.inner(input_ids[rows], scores, **kwargs).cpu()
        return done.to(input_ids.device)


# -- one batch at one budget --------------------------------------------------------------------------


@dataclass
class _Batch:
    """A prompt batch with its images encoded, and which images belong to which row."""

    generator: Generator
    input_ids: list[Sequence[int]]
    encoded: EncodedImages | None
    image_sizes: list[tuple[int, int]] | None
    images_of_row: list[list[int]]

    @classmethod
    def encode(cls, generator: Generator, batch: PromptBatch) -> _Batch:
        counts = [sum(1 for t in ids if t == IMAGE_TOKEN_INDEX) for ids in batch.input_ids]
        starts = [sum(counts[:row]) for row in range(len(counts))]
        images = batch.images
        encoded = images if isinstance(images, EncodedImages) or images is None else generator.encode(list(images))
        sizes = list(batch.image_sizes) if batch.image_sizes is not None else None
        rows = [list(range(start, start + n)) for start, n in zip(starts, counts)]
        return cls(generator, list(batch.input_ids), encoded, sizes, rows)

    def rows(self, rows: Sequence[int]) -> PromptBatch:
        """The prompts of `rows` with their images (no tower work: the encoding is gathered)."""
        images = [i for row in rows for i in self.images_of_row[row]]
        encoded = self.encoded.select(images) if self.encoded is not None and images else None
        sizes = [self.image_sizes[i] for i in images] if self.image_sizes is not None and images else None
        return PromptBatch([self.input_ids[row] for row in rows], encoded, sizes)

    def visual_tokens(self, row: int, scale: int) -> int:
        """Visual tokens row `row`'s images cost at `scale`, as the model splices them in."""
        model = self.generator.model
        sizes = self.image_sizes
        return sum(
            model.num_visual_tokens(scale, sizes[i] if sizes is not None else None) for i in self.images_of_row[row]
        )


def _generate_rows(
    batch: _Batch,
    rows: Sequence[int],
    scale: int,
    params: Sequence[SamplingParams],
    gate: Callable[[FirstTokenConfidence, list[str]], RungGate] | None = None,
) -> tuple[list[int], list[float], list[str]]:
    """One `generate` call for `rows` at `scale`: (kept rows, p_first per row of `rows`, texts of the kept rows).

    `gate(confidence, stops)` builds the rung's gate; without one every row is kept (a fixed budget)."""
    generator = batch.generator
    rung_params = [generator.with_template_stop(params[row]) for row in rows]
    stops = sorted({stop for p in rung_params for stop in p.stop})
    confidence = FirstTokenConfidence(rung_params[0].num_beams)
    stopping = StopStrings(stops, generator.decode_batch) if gate is None else gate(confidence, stops)
    output = generator.generate(batch.rows(rows), scale, rung_params, stopping=stopping, observers=[confidence])
    kept = list(range(len(rows))) if gate is None else stopping.kept or []
    texts = generator.answer_texts(output[kept], stops) if kept else []
    return [rows[k] for k in kept], confidence.p.tolist(), texts


def answer_at_scale(
    generator: Generator, batch: PromptBatch, scale: int, params: SamplingParams | Sequence[SamplingParams]
) -> ScaleAnswers:
    """Answer a batch at one budget, as `Generator.answer` does, and record p_first and the wall time
    (including the tower when `batch.images` are pixels)."""
    start = time.perf_counter()
    prepared = _Batch.encode(generator, batch)
    rows = list(range(len(prepared.input_ids)))
    _, p_first, texts = _generate_rows(prepared, rows, scale, _per_row(params, len(rows)))
    seconds = time.perf_counter() - start
    return ScaleAnswers(scale, texts, p_first, [prepared.visual_tokens(r, scale) for r in rows], seconds)


def answer_every_scale(
    generator: Generator, batch: PromptBatch, scales: Sequence[int], params: SamplingParams
) -> tuple[float, dict[int, ScaleAnswers]]:
    """One question batch at every budget from one tower pass: (seconds of the tower pass, answers per budget).

    Each budget's `seconds` is its own `generate` call; add the tower's seconds for what a request at that
    budget alone would take."""
    start = time.perf_counter()
    prepared = _Batch.encode(generator, batch)
    encode_seconds = time.perf_counter() - start
    shared = PromptBatch(prepared.input_ids, prepared.encoded, prepared.image_sizes)
    return encode_seconds, {scale: answer_at_scale(generator, shared, scale, params) for scale in scales}


# -- the ladder walk ------------------------------------------------------------------------------------


@dataclass
class _Rung:
    """One rung of the walk for the rows not answered yet: its gate, which records every row's p_first and
    visual tokens once the prefill ran and then builds what ends the rows the rung keeps."""

    batch: _Batch
    answers: list[AdaptiveAnswer]
    rows: list[int]
    scale: int
    thresholds: torch.Tensor
    """(len(rows),): -1 for rows kept whatever their p_first."""
    make_stopping: StoppingFactory | None

    def gate(self, confidence: FirstTokenConfidence, stops: list[str]) -> RungGate:
        def build(kept: list[int], p_first: list[float]) -> StoppingCriteria:
            for row, p in zip(self.rows, p_first):
                self.answers[row].rungs.append(self.scale)
                self.answers[row].p_first.append(p)
                self.answers[row].tokens.append(self.batch.visual_tokens(row, self.scale))
            if self.make_stopping is None:
                return StopStrings(stops, self.batch.generator.decode_batch)
            rows = [self.rows[k] for k in kept]
            return self.make_stopping(rows, [self.answers[row] for row in rows])

        return RungGate(confidence, self.thresholds, build)


def answer_adaptive(
    generator: Generator,
    batch: PromptBatch,
    policy: ScalePolicy,
    params: SamplingParams | Sequence[SamplingParams],
    make_stopping: StoppingFactory | None = None,
) -> list[AdaptiveAnswer]:
    """Answer every prompt of `batch` at the first rung of `policy` whose p_first clears its threshold.

    Args:
        batch: prompts and their images, as pixels or as `Generator.encode`'s result; the tower runs at most once.
        params: one `SamplingParams` for all rows or one per row; beam search is not supported (the policy
            judges the first token of one answer).
        make_stopping: what ends the rows a rung keeps (`rows, their answers so far -> StoppingCriteria`, e.g. a
            streaming tracker); default: the stop strings of `params` and the template, as `Generator.answer` does.

    Rows without images answer at the first rung: their prompt does not change with the budget.
    """
    check_policy(generator.model, policy)
    prepared = _Batch.encode(generator, batch)
    per_row = _per_row(params, len(prepared.input_ids))
    if any(p.num_beams != 1 for p in per_row):
        raise ValueError("the adaptive budget judges the first token of one answer; use num_beams=1 with it")
    answers = [AdaptiveAnswer() for _ in prepared.input_ids]
    active = list(range(len(answers)))
    for rung, scale in enumerate(policy.ladder):
        if not active:
            break
        keep_all = [rung == len(policy.ladder) - 1 or not prepared.images_of_row[row] for row in active]
        thresholds = torch.tensor([-1.0 if keep else policy.thresholds[rung] for keep in keep_all])
        walk = _Rung(prepared, answers, active, scale, thresholds, make_stopping)
        kept, _, texts = _generate_rows(prepared, active, scale, per_row, walk.gate)
        for row, text in zip(kept, texts):
            answers[row].text = text
        done = set(kept)
        active = [row for row in active if row not in done]
    return answers


def _per_row(params: SamplingParams | Sequence[SamplingParams], rows: int) -> list[SamplingParams]:
    per_row = [params] * rows if isinstance(params, SamplingParams) else list(params)
    if len(per_row) != rows:
        raise ValueError(f"{len(per_row)} sampling settings for a batch of {rows} prompts; give one or one per prompt")
    return per_row


# -- which policy ---------------------------------------------------------------------------------------


def check_policy(model: Any, policy: ScalePolicy) -> ScalePolicy:
    """`policy` if every rung is a budget this model can pool to, else a ValueError listing the valid ones."""
    for scale in policy.ladder:
        model.resolve_scale(scale)
    return policy


def default_policy(model: Any, threshold: float = DEFAULT_THRESHOLD) -> ScalePolicy:
    """The ladder of the budgets the checkpoint was trained on, with one uncalibrated threshold."""
    trained = model.config.matryoshka_train_scales or [s for s in TRAINED_SCALES if s <= model.grid_side**2]
    return ScalePolicy.uniform(sorted(trained), threshold)


def checkpoint_policy(model: Any, model_path: str | Path) -> ScalePolicy:
    """The policy of `--matryoshka_vis_token_scale auto`: the checkpoint's `matryoshka_policy.json`, else
    `default_policy` with a warning that it is not calibrated."""
    stored = load_checkpoint_policy(model_path)
    if stored is not None:
        return check_policy(model, stored.policy)
    policy = default_policy(model)
    logger.warning(
        "%s has no calibrated scale policy (matryoshka_policy.json); 'auto' uses %s, uncalibrated: "
        "run python -m llava.eval.calibrate_scale to fit it to this checkpoint",
        model_path,
        policy.describe(),
    )
    return policy


def resolve_budget(value: int | AutoScale | None, model: Any, model_path: str | Path) -> int | ScalePolicy | None:
    """A parsed `--matryoshka_vis_token_scale`: an int or None stays (the model checks it), `AUTO` becomes
    the checkpoint's policy."""
    return checkpoint_policy(model, model_path) if isinstance(value, AutoScale) else value
