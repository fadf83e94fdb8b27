"""`llava_m3`: an lmms-eval model for LLaVA/M3 checkpoints at one visual-token budget per run.

`--model_args` (lmms-eval splits them at commas, so one scale per run):

- `pretrained`: checkpoint folder or hub id (required); `model_base` for LoRA/projector checkpoints;
- `matryoshka_vis_token_scale`: visual tokens per image (per crop for anyres), e.g. 36; default:
  the checkpoint's;
- `conv_template`: conversation template; default: the one stored with / guessed for the checkpoint;
- `dtype` (e.g. `bfloat16`; default float16 on GPUs, float32 on CPU).

The batch size and the device are lmms-eval's own options (`--batch_size`, `--device`), which it hands
to the model itself; in `--model_args` as well they would reach the model twice, so they are refused
there. Device default: `cuda:<local rank>` under `accelerate launch`, else the best available.

`generate_until` asks each request's context with its images in one left-padded batch (requests
with the same generation kwargs), encoding the batch's images once; the request's `until` strings stop
the generation. `loglikelihood` scores a continuation with one forward pass, in lmms-eval's convention
(see `LlavaM3.loglikelihood`). Prompts are built exactly as `llava.eval.harness` builds them.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import PartialState
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.utils import simple_parse_args_string
from PIL import Image
from tqdm import tqdm

from llava.eval.harness import load_model
from llava.generation import Generator, PromptBatch, SamplingParams, default_device
from llava.model.llava_arch import EncodedImages
from llava.model.matryoshka import parse_scales

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 1024
LMMS_EVAL_OPTIONS = ("batch_size", "max_batch_size", "device")
"""What lmms-eval passes to every model from its own command line; never a `--model_args` key here."""


class LlavaM3(lmms):
    """lmms-eval's simple (text + images) model interface over `llava.model`."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        model_base: str | None = None,
        matryoshka_vis_token_scale: int | str | None = None,
        conv_template: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"llava_m3: unknown model_args {sorted(unknown)}; known: pretrained, model_base, "
                "matryoshka_vis_token_scale, conv_template, dtype (batch size and device: lmms-eval's "
                "--batch_size and --device)"
            )
        state = PartialState()  # sets up torch.distributed under `accelerate launch`, a no-op otherwise
        device = device or default_device()
        if device.startswith("cuda") and state.num_processes > 1:
            device = f"cuda:{state.local_process_index}"
        self.generator: Generator = load_model(str(pretrained), model_base, device, dtype, conv_template)
        self.model, self.tokenizer = self.generator.model, self.generator.tokenizer
        self.device = self.model.device
        self.scale = self.model.resolve_scale(_one_scale(matryoshka_vis_token_scale))
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1
        self._rank, self._world_size = state.process_index, state.num_processes
        self.model_name = f"{self.generator.model_name}@{self.scale}"  # read by lmms-eval's response cache naming
        logger.info("llava_m3: %s at %d visual tokens, template %s", pretrained, self.scale, self.generator.conv_mode)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> LlavaM3:
        """lmms-eval's constructor from `--model_args`, refusing its own options there with a clear error
        (instead of Python's "got multiple values for keyword argument")."""
        given = sorted(set(simple_parse_args_string(arg_string)) & set(LMMS_EVAL_OPTIONS))
        if given:
            flags = ", ".join(f"--{name}" for name in given)
            raise ValueError(f"llava_m3: {given} are not model_args; give them as lmms-eval's own {flags}")
        return super().create_from_arg_string(arg_string, additional_config)

    # -- requests -----------------------------------------------------------------------------------

    def _visuals(self, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        for v in visuals:
            if not isinstance(v, Image.Image):
                raise TypeError(f"llava_m3 takes images only; task {task} doc {doc_id} gave a {type(v).__name__}")
        return [v.convert("RGB") for v in visuals]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)  # one generate call needs one set of decoding settings
        for index, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(index)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="llava_m3")
        for indices in groups.values():
            params = _sampling(requests[indices[0]].args[1])
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                for index, text in zip(batch, self._generate_batch([requests[i] for i in batch], params)):
                    results[index] = text
                progress.update(len(batch))
        progress.close()
        return results

    def _generate_batch(self, requests: Sequence[Instance], params: SamplingParams) -> list[str]:
        images: list[Image.Image] = []
        input_ids = []
        for request in requests:
            context, _, doc_to_visual, doc_id, task, split = request.args
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            images += visuals
            input_ids.append(self.generator.tokenize(self.generator.prompt(context, len(visuals))))
        encoded = self.generator.encode(self.generator.pixels(images))
        batch = PromptBatch(input_ids, encoded, [image.size for image in images])
        return self.generator.answer(batch, self.scale, params)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(loss, greedy) per request, the convention of lmms-eval's own models (`llava`, `llava_hf`, ...).

        The loss is the mean negative log-likelihood per token of the continuation given as the
        assistant's answer, ended the way the template ends an answer (`</s>` for vicuna_v1), so an
        option is scored as a whole answer, not as the prefix of a longer one. lmms-eval ranks
        multiple-choice options by `argmin` of these losses (and `acc_norm` by loss per character).
        `greedy`: whether greedy decoding would produce exactly those tokens.

        Consecutive requests about the same document (the options of one question) share one pass of
        the vision tower.
        """
        results = []
        encoded_doc: tuple[Any, EncodedImages | None, list[tuple[int, int]]] | None = None
        for request in tqdm(requests, disable=self.rank != 0, desc="llava_m3 loglikelihood"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            if encoded_doc is None or encoded_doc[0] != (task, split, doc_id):
                visuals = self._visuals(doc_to_visual, doc_id, task, split)
                encoded = self.generator.encode(self.generator.pixels(visuals))
                encoded_doc = ((task, split, doc_id), encoded, [image.size for image in visuals])
            _, images, image_sizes = encoded_doc
            results.append(self._score(context, continuation, images, image_sizes))
        return results

    def _score(
        self, context: str, continuation: str, images: EncodedImages | None, image_sizes: list[tuple[int, int]]
    ) -> tuple[float, bool]:
        prompt = self.generator.prompt(context, len(image_sizes))
        answer = continuation + (self.generator.stop or "")
        # A space ending the prompt belongs to the continuation's first token (lm-eval's rule).
        spaces = len(prompt) - len(prompt.rstrip(" "))
        if spaces:
            prompt, answer = prompt[:-spaces], prompt[-spaces:] + answer
        context_ids = self.generator.tokenize(prompt)
        full_ids = torch.tensor(self.generator.tokenize(prompt + answer))
        num_target = len(full_ids) - len(context_ids)
        if num_target < 1:
            raise ValueError(f"the continuation {continuation!r} adds no tokens to the context")
        target = full_ids[-num_target:].to(self.model.device)
        with torch.no_grad():
            logits = self.model(
                input_ids=full_ids[None].to(self.model.device),
                images=images,
                image_sizes=image_sizes,
                matryoshka_vis_token_scale=self.scale,
            ).logits
        # Visual tokens expand the sequence inside the model, but the continuation is its tail.
        logprobs = torch.log_softmax(logits[0, -num_target - 1 : -1].float(), dim=-1)
        loss = -logprobs.gather(-1, target[:, None]).mean().item()
        greedy = bool((logprobs.argmax(-1) == target).all())
        return loss, greedy

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("llava_m3 does not implement multi-round generation")


def _one_scale(value: int | str | None) -> int | None:
    """`matryoshka_vis_token_scale` from `--model_args` (lmms-eval passes digits as an int, other text as a str)."""
    if not isinstance(value, str):
        return value
    scales = parse_scales(value)
    if len(scales) != 1:
        raise ValueError(f"llava_m3 evaluates one matryoshka_vis_token_scale per run, got {scales}")
    return scales[0]


def _sampling(gen_kwargs: dict[str, Any]) -> SamplingParams:
    """lmms-eval's generation kwargs as our decoding settings; its `until` strings end the answer."""
    until = gen_kwargs.get("until") or []
    return SamplingParams(
        temperature=float(gen_kwargs.get("temperature", 0) or 0),
        top_p=gen_kwargs.get("top_p"),
        max_new_tokens=int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
        stop=(until,) if isinstance(until, str) else tuple(until),
        num_beams=int(gen_kwargs.get("num_beams", 1) or 1),
    )
