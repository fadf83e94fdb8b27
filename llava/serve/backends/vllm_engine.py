"""`--backend vllm`: the checkpoint on an in-process vLLM engine, through the llava vLLM plugin.

    python -m llava.serve.model_worker --backend vllm --model-path mucai/llava-v1.5-7b-m3 \\
        --tensor-parallel-size 2 --gpu-memory-utilization 0.85

vLLM's async engine (`AsyncLLMEngine`) schedules every request itself: continuous batching, a paged KV
cache, prefix caching, tensor and pipeline parallelism. Flags the worker does not know are vLLM engine
flags, parsed by vLLM's own parser (`vllm serve --help` lists them), and so is the worker's `--dtype`;
the engine's `--max-model-len` is the context the worker budgets requests against.

The request contract is the worker's: requests are checked by the shared rules (backends/base.py)
before the engine sees them, the prompt goes in as our own token ids with the plugin's image placeholder
where each image goes (so every tokenizer works, M3-Shapes' word-level one included), and the budget as
the plugin's per-request `mm_processor_kwargs`. The engine returns token ids; the answer text, its stop
strings and its end are ours (`AnswerTracker`, as in our own engine), so both backends answer alike.
`"auto"` walks the checkpoint's policy over the engine, one request per rung tried (`VLLMBackend._walk`).
"""

from __future__ import annotations

import argparse
import logging
import math
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from llava.adaptive import AdaptiveAnswer
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import get_model_name_from_path
from llava.optional import optional_dependency
from llava.scale_policy import ScalePolicy
from llava.serve.backends.base import EngineBackend, ServiceLimits, limits_from_args, rules_from_checkpoint
from llava.serve.backends.base import rules_kwargs_from_args as rules_kwargs
from llava.serve.engine import AnswerTracker, CheckpointRules, GenerationChunk, Job, PreparedRequest
from llava.serve.http import RequestError

logger = logging.getLogger(__name__)


def engine_flags(args: argparse.Namespace) -> list[str]:
    """The vLLM engine flags of a worker command line: its `--dtype` (a flag of both engines; "auto" leaves
    vLLM's own choice) and the flags the worker does not know."""
    return [*([] if args.dtype == "auto" else ["--dtype", args.dtype]), *args.engine_args]


def engine_args(model_path: str, flags: Sequence[str]) -> Any:
    """vLLM's `AsyncEngineArgs` for `model_path` from vLLM engine flags (`--tensor-parallel-size 2`, ...)."""
    with optional_dependency():
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.utils.argparse_utils import FlexibleArgumentParser

    if any(flag.split("=")[0] in ("--model", "--model-tag") for flag in flags):
        raise SystemExit("name the checkpoint with --model-path; --backend vllm passes it to the engine as --model")
    parser = AsyncEngineArgs.add_cli_args(
        FlexibleArgumentParser(prog="vLLM engine flags of python -m llava.serve.model_worker --backend vllm")
    )
    return AsyncEngineArgs.from_cli_args(parser.parse_args(["--model", model_path, *flags]))


class VLLMBackend(EngineBackend):
    """An `AsyncLLMEngine` on an M3 checkpoint; the worker's rules check requests, the engine generates."""

    name = "vllm"

    def __init__(self, rules: CheckpointRules, engine: Any, limits: ServiceLimits | None = None) -> None:
        from llava.vllm_plugin.processor import image_placeholder_id

        super().__init__(rules, limits)
        self.engine = engine
        self.placeholder_id = image_placeholder_id(rules.generator.tokenizer)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> VLLMBackend:
        """Start the engine the flags describe (`--model-path`, `--dtype` and the vLLM engine flags) and the worker's
        rules."""
        with optional_dependency():
            from vllm import AsyncLLMEngine

        engine = AsyncLLMEngine.from_engine_args(engine_args(args.model_path, engine_flags(args)))
        try:
            rules = rules_from_checkpoint(
                args.model_path,
                args.model_name or get_model_name_from_path(args.model_path),
                context_len=engine.model_config.max_model_len,
                conv_mode=args.conv_mode,
                **rules_kwargs(args),
            )
            return cls(rules, engine, limits_from_args(args))
        except BaseException:
            engine.shutdown()
            raise

    async def stop(self) -> None:
        self.engine.shutdown()

    def engine_status(self) -> dict[str, Any]:
        parallel = self.engine.vllm_config.parallel_config
        return {
            **super().engine_status(),
            "tensor_parallel_size": parallel.tensor_parallel_size,
            "pipeline_parallel_size": parallel.pipeline_parallel_size,
        }

    def engine_prompt(self, prepared: PreparedRequest, scale: int | None = None) -> dict[str, Any]:
        """Our token ids with the plugin's placeholder for each image, the images, and the budget (`scale`, for
        a policy's rung; else the request's)."""
        ids = [self.placeholder_id if token == IMAGE_TOKEN_INDEX else token for token in prepared.input_ids]
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if prepared.images:
            from llava.vllm_plugin.processor import SCALE_KWARG

            prompt["multi_modal_data"] = {"image": prepared.images}
            prompt["mm_processor_kwargs"] = {SCALE_KWARG: prepared.scale if scale is None else scale}
        return prompt

    def sampling_params(self, prepared: PreparedRequest, first_token_confidence: bool = False) -> Any:
        """vLLM's sampling for the request: token ids only (we decode), ending at our end tokens and token limit;
        with `first_token_confidence`, the most likely token's log-probability at each step too (the engine's
        default `logprobs_mode` reads the model's own distribution, before temperature and top-p)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = prepared.sampling
        sampled = sampling.temperature > 0
        return SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampled and sampling.top_p is not None else 1.0,
            max_tokens=prepared.max_new_tokens,
            stop_token_ids=self.rules.generator.end_token_ids(sampling.stop),
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
            logprobs=1 if first_token_confidence else None,
        )

    async def start_answer(self, prepared: PreparedRequest) -> AsyncGenerator[GenerationChunk, None]:
        if isinstance(prepared.scale, ScalePolicy):
            return await self._walk(prepared, prepared.scale)
        params = self.sampling_params(prepared)
        first, outputs = await self._request(prepared, None, params)
        return self._chunks(prepared, set(params.stop_token_ids), first, outputs)

    async def _request(self, prepared: PreparedRequest, scale: int | None, params: Any) -> tuple[Any, Any]:
        """Hand the request (at `scale`, for a rung) to the engine: (its first output, the rest)."""
        from vllm.exceptions import VLLMValidationError

        prompt = self.engine_prompt(prepared, scale)
        outputs = self.engine.generate(prompt, params, request_id=f"llava-{uuid.uuid4().hex}")
        try:
            first = await anext(outputs)
        except VLLMValidationError as e:  # a refusal the shared checks did not foresee
            raise RequestError(400, f"the vLLM engine refused the request: {e}") from None
        return first, outputs

    async def _walk(self, prepared: PreparedRequest, policy: ScalePolicy) -> AsyncGenerator[GenerationChunk, None]:
        """The adaptive budget: each rung's request is the whole answer at that budget, and its first token
        decides. A rung that is not sure enough (p_first, the most likely first token's probability, not above
        its threshold) is aborted after that token, having cost its prefill and one step, as in our own engine
        (`llava.adaptive`); the rung that is sure streams on. A prompt without images answers at the first rung."""
        params = self.sampling_params(prepared, first_token_confidence=True)
        budget = AdaptiveAnswer()
        for rung, scale in enumerate(policy.ladder):
            first, outputs = await self._request(prepared, scale, params)
            budget.rungs.append(scale)
            budget.tokens.append(sum(self.rules.model.num_visual_tokens(scale, size) for size in prepared.image_sizes))
            budget.p_first.append(_first_token_confidence(first))
            if not prepared.images or policy.keeps(rung, budget.p_first[-1]):
                return self._chunks(prepared, set(params.stop_token_ids), first, outputs, budget)
            await outputs.aclose()  # aborts the rung's request in the engine
        raise AssertionError("the last rung of a policy keeps every answer")

    async def _chunks(
        self,
        prepared: PreparedRequest,
        end_ids: set[int],
        first: Any,
        outputs: AsyncGenerator[Any, None],
        budget: AdaptiveAnswer | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """The engine's outputs (new token ids each) → our chunks, as `AnswerTracker` streams and ends them;
        `budget`: the policy's walk, which the final chunk reports."""
        pending: list[GenerationChunk] = []
        tracker = AnswerTracker(Job(prepared, pending.append), self.rules.generator.decode, end_ids, budget)
        try:
            _feed(tracker, first)
            for chunk in pending:
                yield chunk
            pending.clear()
            if not tracker.done:
                async for output in outputs:
                    _feed(tracker, output)
                    for chunk in pending:
                        yield chunk
                    pending.clear()
                    if tracker.done:
                        break
        except Exception as e:  # the engine failed this request: end the answer with the error, keep serving
            logger.exception("vLLM generation failed")
            tracker.fail(f"generation failed: {type(e).__name__}: {e}")
        else:
            if not tracker.done:
                tracker.fail("the vLLM engine ended the answer without finishing it")
        finally:
            await outputs.aclose()
        for chunk in pending:
            yield chunk


def _first_token_confidence(output: Any) -> float:
    """p_first of a request's first output: the probability of the most likely first token (with `logprobs=1`
    vLLM returns the sampled token's and the most likely one's log-probability; the largest is the latter)."""
    (step, *_) = output.outputs[0].logprobs
    return math.exp(max(logprob.logprob for logprob in step.values()))


def _feed(tracker: AnswerTracker, output: Any) -> None:
    """One `RequestOutput` (DELTA: the tokens since the last one) into the tracker."""
    completion = output.outputs[0]
    for token in completion.token_ids:
        if tracker.done:
            return
        tracker.step(token)
    if output.finished and not tracker.done:
        # The engine stopped on its own (an end token it knows, its length limit) without our tracker seeing why.
        tracker.finish("stop" if completion.finish_reason == "stop" else "length")
