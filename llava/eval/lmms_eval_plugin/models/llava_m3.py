"""`llava_m3`: an lmms-eval model for LLaVA/M3 checkpoints at one visual-token budget per run.

`--model_args` (lmms-eval splits them at commas, so one scale per run):

- `pretrained`: checkpoint folder or hub id (required); `model_base` for LoRA/projector checkpoints;
- `matryoshka_vis_token_scale`: visual tokens per image (per crop for anyres), e.g. 36; default:
  the checkpoint's;
- `conv_template`: conversation template; default: the one stored with / guessed for the checkpoint;
- `device` (default: `cuda:<local rank>` under `accelerate launch`, else the best available),
  `dtype` (e.g. `bfloat16`; default float16 on GPUs, float32 on CPU), `batch_size`.

`generate_until` asks each request's context with its images in one left-padded batch (requests
with the same generation kwargs), encoding the batch's images once; `loglikelihood` scores a
continuation with one forward pass. Prompts are built exactly as `llava.eval.harness` builds them.
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
from PIL import Image
from tqdm import tqdm

from llava.conversation import select_conv_mode
from llava.eval.generation import GenerationSettings, build_prompt, generate_answers, stop_string, tokenize_prompt
from llava.eval.harness import load_model, resolve_scales
from llava.eval.run_llava import default_device
from llava.mm_utils import process_images
from llava.model.llava_arch import EncodedImages

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 1024


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
                "matryoshka_vis_token_scale, conv_template, device, dtype, batch_size"
            )
        state = PartialState()  # sets up torch.distributed under `accelerate launch`, a no-op otherwise
        device = device or default_device()
        if device.startswith("cuda") and state.num_processes > 1:
            device = f"cuda:{state.local_process_index}"
        self.loaded = load_model(str(pretrained), model_base, device, dtype=dtype)
        model = self.loaded.model
        scales, several = resolve_scales(model, matryoshka_vis_token_scale)
        if several:
            raise ValueError(f"llava_m3 evaluates one matryoshka_vis_token_scale per run, got {scales}")
        self.scale = scales[0]
        self.conv_mode = conv_template or select_conv_mode(self.loaded.name, model.config.conv_template)
        self.batch_size_per_device = int(batch_size) if str(batch_size).isdigit() else 1
        self._rank, self._world_size = state.process_index, state.num_processes
        self.model_name = f"{self.loaded.name}@{self.scale}"  # read by lmms-eval's response cache naming
        logger.info("llava_m3: %s at %d visual tokens, template %s", pretrained, self.scale, self.conv_mode)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_device

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- requests -----------------------------------------------------------------------------------

    def _visuals(self, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        for v in visuals:
            if not isinstance(v, Image.Image):
                raise TypeError(f"llava_m3 takes images only; task {task} doc {doc_id} gave a {type(v).__name__}")
        return [v.convert("RGB") for v in visuals]

    def _encode(self, images: Sequence[Image.Image]) -> EncodedImages | None:
        if not images:
            return None
        pixels = process_images(images, self.loaded.image_processor, self.model.config)
        per_image = [p.to(self.model.device, self.model.dtype) for p in pixels]
        with torch.no_grad():
            return self.model.encode_images(per_image)

    def _prompt(self, context: str, num_images: int) -> str:
        return build_prompt(self.conv_mode, context, num_images, bool(self.model.config.mm_use_im_start_end))

    def generate_until(self, requests: list[Instance]) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)  # one generate call needs one set of decoding settings
        for index, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(index)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="llava_m3")
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1])
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            settings = GenerationSettings(
                temperature=float(gen_kwargs.get("temperature", 0) or 0),
                top_p=gen_kwargs.get("top_p"),
                num_beams=int(gen_kwargs.get("num_beams", 1) or 1),
                max_new_tokens=int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            )
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                for index, text in zip(batch, self._generate_batch([requests[i] for i in batch], settings)):
                    for stop in until:
                        if stop and stop in text:
                            text = text[: text.index(stop)]
                    results[index] = text
                progress.update(len(batch))
        progress.close()
        return results

    def _generate_batch(self, requests: Sequence[Instance], settings: GenerationSettings) -> list[str]:
        images: list[Image.Image] = []
        input_ids = []
        for request in requests:
            context, _, doc_to_visual, doc_id, task, split = request.args
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            images += visuals
            input_ids.append(tokenize_prompt(self._prompt(context, len(visuals)), self.tokenizer))
        return generate_answers(
            self.model,
            self.tokenizer,
            input_ids,
            self._encode(images),
            [image.size for image in images],
            self.scale,
            settings,
            stop_string(self.conv_mode),
        )

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Sum of the continuation's token log-probabilities after the context, and whether greedy picks it."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="llava_m3 loglikelihood"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            results.append(self._score(context, continuation, visuals))
        return results

    def _score(self, context: str, continuation: str, images: list[Image.Image]) -> tuple[float, bool]:
        prompt = self._prompt(context, len(images))
        # A space ending the prompt belongs to the continuation's first token (lm-eval's rule).
        spaces = len(prompt) - len(prompt.rstrip(" "))
        if spaces:
            prompt, continuation = prompt[:-spaces], prompt[-spaces:] + continuation
        context_ids = tokenize_prompt(prompt, self.tokenizer)
        full_ids = tokenize_prompt(prompt + continuation, self.tokenizer)
        num_target = full_ids.shape[0] - context_ids.shape[0]
        if num_target < 1:
            raise ValueError(f"the continuation {continuation!r} adds no tokens to the context")
        target = full_ids[-num_target:].to(self.model.device)
        with torch.no_grad():
            logits = self.model(
                input_ids=full_ids[None].to(self.model.device),
                images=self._encode(images),
                image_sizes=[image.size for image in images],
                matryoshka_vis_token_scale=self.scale,
            ).logits
        # Visual tokens expand the sequence inside the model, but the continuation is its tail.
        logprobs = torch.log_softmax(logits[0, -num_target - 1 : -1].float(), dim=-1)
        total = logprobs.gather(-1, target[:, None]).sum().item()
        greedy = bool((logprobs.argmax(-1) == target).all())
        return total, greedy

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("llava_m3 does not implement multi-round generation")
