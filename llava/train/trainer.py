"""`LLaVATrainer`: the HF Trainer plus what LLaVA/M3 training needs.

- per-module learning rates (`--mm_projector_lr`, `--mm_vision_tower_lr`);
- the modality-grouped sampler (`--group_by_modality_length`), reproducible across resumes;
- the per-budget losses of the M3 objective, logged next to the loss as `loss_<scale>`;
- saving in the released on-disk format: full checkpoints (the tower's weights only when it was
  trained), `mm_projector.bin` for projector pretraining, the LoRA adapter plus
  `non_lora_trainables.bin`; with the image processor, so `load_pretrained_model` opens them;
- checkpoints published whole (see `llava.train.checkpoints`), so a run killed mid-save resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, rotate_checkpoints

from llava.model.builder import load_weight_file
from llava.optional import optional_dependency
from llava.train.checkpoints import PROJECTOR_FILE, UNFINISHED_DIR, publish, remove_unfinished
from llava.train.model_setup import gathered, load_projector_weights
from llava.train.sampler import ModalityLengthGroupedSampler

logger = logging.getLogger(__name__)

NON_LORA_FILE = "non_lora_trainables.bin"
PEFT_PREFIX = "base_model.model."


class LLaVATrainer(Trainer):
    def __init__(self, *args: Any, image_processor: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_processor = image_processor
        self._loss_sums: dict[int, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        self._idle_hook: torch.utils.hooks.RemovableHandle | None = None
        self._idle_features: torch.Tensor | None = None
        self._writing_checkpoint = False

    # -- the model under the wrappers ---------------------------------------------------------

    @property
    def llava_model(self) -> Any:
        """The `LlavaMetaForCausalLM` inside any DeepSpeed / DDP / PEFT wrapper."""
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if self.is_lora else model

    @property
    def is_lora(self) -> bool:
        return hasattr(self.accelerator.unwrap_model(self.model), "peft_config")

    # -- data ---------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        return ModalityLengthGroupedSampler(
            dataset.modality_lengths,
            batch_size=self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.seed,
        )

    # -- optimizer ----------------------------------------------------------------------------

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Trainable parameters by (module lr, weight decay); empty groups left out."""
        decay = set(self.get_decay_parameter_names(model))
        lrs = {"mm_projector": self.args.mm_projector_lr, "vision_tower": self.args.mm_vision_tower_lr}
        groups: dict[tuple[float | None, bool], list[nn.Parameter]] = defaultdict(list)
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            lr = next((lr for module, lr in lrs.items() if lr is not None and module in name), None)
            groups[(lr, name in decay)].append(param)
        result = []
        for (lr, decayed), params in groups.items():
            group: dict[str, Any] = {"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0}
            if lr is not None:
                group["lr"] = lr
            result.append(group)
        return result

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if self._offloads_optimizer():
                # ZeRO-Offload steps on the CPU and insists on DeepSpeed's CPU Adam; keep our groups.
                with optional_dependency():
                    from deepspeed.ops.adam import DeepSpeedCPUAdam

                optimizer_cls = DeepSpeedCPUAdam
                kwargs = {
                    "lr": self.args.learning_rate,
                    "betas": (self.args.adam_beta1, self.args.adam_beta2),
                    "eps": self.args.adam_epsilon,
                    "adamw_mode": True,
                }
            self.optimizer = optimizer_cls(self.parameter_groups(opt_model), **kwargs)
        return self.optimizer

    def _offloads_optimizer(self) -> bool:
        if not self.is_deepspeed_enabled:
            return False
        zero = self.accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        return zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)

    # -- loss ---------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        self._ensure_idle_tower_hook()
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self._idle_features is not None:
            loss = loss + self._idle_features.sum() * 0.0  # keeps the idle pass in the backward too
            self._idle_features = None
        if model.training:
            self._record_scale_losses(outputs)
        return (loss, outputs) if return_outputs else loss

    def _ensure_idle_tower_hook(self) -> None:
        """In a multi-process run, make a text-only batch run the vision tower too, first, like an image batch.

        Every rank must run the same modules in the same order: ZeRO-3 gathers parameters
        collectively, prefetching along the order it traced, and the other ranks may hold images
        this step. The pass runs in a forward pre-hook of the outermost model, registered after
        DeepSpeed's own hooks, so it falls inside the traced forward (the original LLaVA fed a
        dummy image per text-only sample for the same reason).
        """
        if self._idle_hook is not None or self.args.world_size == 1 or self.llava_model.get_vision_tower() is None:
            return
        self._idle_hook = self.model.register_forward_pre_hook(self._idle_tower_pass, with_kwargs=True)

    def _idle_tower_pass(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not module.training or kwargs.get("images") is not None or kwargs.get("labels") is None:
            return
        model = self.llava_model
        side = model.get_vision_tower().image_size
        dummy = torch.zeros(1, 3, side, side, device=kwargs["labels"].device)
        self._idle_features = model.encode_images(dummy).features

    def _record_scale_losses(self, outputs: Any) -> None:
        scale_losses = getattr(outputs, "scale_losses", None)
        for scale, value in (scale_losses or {}).items():
            self._loss_sums[scale] = self._loss_sums[scale] + value.detach().float()  # no device sync per step

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add `loss_<scale>` to training logs, normalised exactly as the logged loss is.

        The Trainer scales the loss (by tokens, accumulation steps, processes) before logging it;
        the factor is the same for every budget, and the loss is the weighted mean of the budgets'
        losses, so budget s is logged as `loss × sum_s / weighted mean of the sums`.
        """
        if "loss" in logs and self._loss_sums:
            scales = sorted(self._loss_sums)
            sums = torch.stack([self._loss_sums[s].to(self.args.device) for s in scales])
            sums = self.accelerator.reduce(sums, reduction="sum").cpu().tolist()
            weights = self._scale_weights(scales)
            total = sum(w * v for w, v in zip(weights, sums)) / sum(weights)
            for scale, value in zip(scales, sums):
                logs[f"loss_{scale}"] = logs["loss"] * value / total if total else float("nan")
            self._loss_sums.clear()
        super().log(logs, start_time)

    def _scale_weights(self, scales: list[int]) -> list[float]:
        config = self.llava_model.config
        if config.matryoshka_scale_weights and sorted(config.matryoshka_train_scales or []) == scales:
            by_scale = dict(zip(config.matryoshka_train_scales, config.matryoshka_scale_weights))
            return [float(by_scale[s]) for s in scales]
        return [1.0] * len(scales)

    # -- saving -------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.llava_model.config.tune_mm_mlp_adapter:
            self._save_projector(output_dir or self.args.output_dir)
            return
        super().save_model(output_dir, _internal_call)

    def _save_projector(self, output_dir: str) -> None:
        """Pretraining: only the projector trained, so only it is saved (with the config)."""
        model = self.llava_model
        params = {name: p for name, p in model.named_parameters() if "mm_projector." in name}
        with gathered(params.values()):  # collective: every rank enters
            state = {name: p.detach().cpu().clone() for name, p in params.items()}
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        torch.save(state, os.path.join(output_dir, PROJECTOR_FILE))
        with self._inference_config() as config:
            config.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        self._save_image_processor(output_dir)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, written under `_unfinished_checkpoints/` and renamed into place when whole.

        Every process writes its part (RNG state, DeepSpeed shards) before the rename, and checkpoints
        beyond `--save_total_limit` are deleted only after it, so a kill at any moment leaves the
        previous checkpoint intact and no partial `checkpoint-N`. (LLaVA training has no evaluation
        set, so the Trainer's best-checkpoint bookkeeping, which would look in the unfinished folder, never runs.)
        """
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            remove_unfinished(run_dir)
        self.accelerator.wait_for_everyone()
        self._writing_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._writing_checkpoint = False
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        if self.args.push_to_hub and self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            self._finish_current_push()  # the upload reads the folder that is about to be renamed
        publish(run_dir / UNFINISHED_DIR / name, run_dir / name)
        rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)

    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, UNFINISHED_DIR) if self._writing_checkpoint else run_dir

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Full checkpoint, or LoRA adapter + `non_lora_trainables.bin` + config; plus the image processor."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save and not self.is_distributed_loading_by_transformers:
            return
        if state_dict is None:
            state_dict = self.model.state_dict()
        with self._inference_config() as config:
            if self.is_lora:
                super()._save(output_dir, state_dict=state_dict)  # the adapter and the tokenizer
                if self.args.should_save:
                    self._save_non_lora_trainables(output_dir, state_dict)
                    config.save_pretrained(output_dir)
            elif self.args.should_save:
                if not config.unfreeze_mm_vision_tower:  # a frozen tower is loaded from mm_vision_tower
                    state_dict = {k: v for k, v in state_dict.items() if ".vision_tower." not in k}
                self._save_full(output_dir, state_dict)
        if self.args.should_save:
            self._save_image_processor(output_dir)

    def _save_full(self, output_dir: str, state_dict: dict[str, torch.Tensor]) -> None:
        """The whole model under its own parameter names, which are the released format.

        `save_original_format=False`: under ZeRO-3, transformers keeps every key conversion it knows
        for CLIP (used or not) and reverting them on save would write `vision_model.vision_model.*`.
        """
        os.makedirs(output_dir, exist_ok=True)
        self.llava_model.save_pretrained(output_dir, state_dict=state_dict, save_original_format=False)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    @contextlib.contextmanager
    def _inference_config(self) -> Iterator[Any]:
        """The config as a checkpoint stores it: generation uses the KV cache (training runs without),
        and no `quantization_config`: --bits is how the base was loaded to train the adapter, and the
        adapter merges into the unquantised base."""
        model = self.llava_model
        config = model.config
        config.architectures = [type(model).__name__]
        use_cache, config.use_cache = config.use_cache, True
        quantization = config.__dict__.pop("quantization_config", None)
        try:
            yield config
        finally:
            config.use_cache = use_cache
            if quantization is not None:
                config.quantization_config = quantization

    def _save_non_lora_trainables(self, output_dir: str, state_dict: dict[str, torch.Tensor]) -> None:
        trainable = {name for name, p in self.model.named_parameters() if p.requires_grad and "lora_" not in name}
        state = {name.removeprefix(PEFT_PREFIX): value.cpu() for name, value in state_dict.items() if name in trainable}
        torch.save(state, os.path.join(output_dir, NON_LORA_FILE))

    def _save_image_processor(self, output_dir: str) -> None:
        if self.image_processor is not None:
            self.image_processor.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Projector-only checkpoints (pretraining) hold just `mm_projector.bin`; the rest is the base.

        For LoRA the Trainer restores the adapter only; the projector and any other weights trained
        next to it are in `non_lora_trainables.bin`.
        """
        folder = Path(resume_from_checkpoint)
        if (folder / PROJECTOR_FILE).exists() and not any(folder.glob("model*.safetensors")):
            load_projector_weights(self.llava_model, folder / PROJECTOR_FILE)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.is_lora and (folder / NON_LORA_FILE).exists():
            load_weight_file(self.llava_model, folder / NON_LORA_FILE)
