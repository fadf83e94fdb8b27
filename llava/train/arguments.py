"""Command-line flags of `llava.train.train`, with the names the LLaVA/M3 scripts use.

Parsed by `transformers.HfArgumentParser`, so every standard `TrainingArguments` flag works too
(`--deepspeed`, `--bf16`, `--gradient_checkpointing`, `--report_to`, `--save_steps`, ...).

Model-architecture flags default to None, meaning "keep the checkpoint's value" when training from
a LLaVA checkpoint, and the `LlavaMultimodalConfig` default when starting from a plain language
model: their defaults live in one place, the config class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import transformers


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "A LLaVA/M3 checkpoint (finetune all scales from it) or a plain LLM (Llama/Mistral/Qwen2)."}
    )
    version: str = field(default="v1", metadata={"help": "Conversation template: plain, v1, llama_2, mistral, ..."})
    freeze_backbone: bool = field(default=False, metadata={"help": "Freeze the language model."})
    tune_mm_mlp_adapter: bool = field(
        default=False, metadata={"help": "Train only the projector (pretraining); saves mm_projector.bin."}
    )
    freeze_mm_mlp_adapter: bool = field(default=False, metadata={"help": "Freeze the projector."})
    unfreeze_mm_vision_tower: bool = field(default=False, metadata={"help": "Train the vision tower too."})
    vision_tower: str | None = field(
        default=None, metadata={"help": "CLIP vision tower (folder or hub id) to take the tower's weights from."}
    )
    mm_vision_select_layer: int | None = field(default=None, metadata={"help": "Hidden layer of the tower (-2)."})
    mm_vision_select_feature: str | None = field(default=None, metadata={"help": "patch or cls_patch."})
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "mm_projector.bin of a pretraining run to start the projector from."}
    )
    mm_projector_type: str | None = field(default=None, metadata={"help": "linear, mlp2x_gelu, ..."})
    mm_use_im_start_end: bool | None = field(default=None, metadata={"help": "Wrap images in <im_start>/<im_end>."})
    mm_use_im_patch_token: bool | None = field(default=None, metadata={"help": "Add the <im_patch> token."})
    mm_patch_merge_type: str | None = field(default=None, metadata={"help": "flat or spatial_unpad (NeXT)."})
    image_aspect_ratio: str | None = field(default=None, metadata={"help": "square, pad or anyres (NeXT)."})
    image_grid_pinpoints: str | None = field(
        default=None, metadata={"help": "anyres resolutions, e.g. '[(336, 672), (672, 336), (672, 672)]'."}
    )
    matryoshka_vis_token_scale: str | None = field(
        default=None,
        metadata={
            "help": "Visual-token budgets trained at once, e.g. '1,9,36,144,576' (the M3 objective); one value "
            "trains a single budget; 'none' trains plain LLaVA; unset keeps the checkpoint's setting."
        },
    )
    matryoshka_scale_weights: str | None = field(
        default=None, metadata={"help": "Weight per budget in the M3 loss, e.g. '1,1,1,1,1' (default: plain mean)."}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2."})


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "LLaVA conversation data: a .json list or a .jsonl file."})
    image_folder: str | None = field(default=None, metadata={"help": "Folder the records' image paths are under."})
    lazy_preprocess: bool = field(
        default=True,
        metadata={"help": "Kept for LLaVA scripts: samples are always tokenised and loaded lazily, per step."},
    )
    overlong_samples: Literal["truncate", "drop"] = field(
        default="truncate",
        metadata={
            "help": "Samples longer than --model_max_length once their visual tokens (at the largest training "
            "budget) are counted: 'truncate' (with a warning) or 'drop' them. Samples whose images alone do not "
            "fit are always dropped."
        },
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None)
    remove_unused_columns: bool = field(default=False)
    model_max_length: int = field(default=512, metadata={"help": "Maximum sequence length, visual tokens included."})
    bits: int = field(default=16, metadata={"help": "4 or 8: load the language model quantised (QLoRA)."})
    double_quant: bool = field(default=True, metadata={"help": "Double quantisation for --bits 4."})
    quant_type: str = field(default="nf4", metadata={"help": "fp4 or nf4 for --bits 4."})
    lora_enable: bool = field(default=False)
    lora_r: int = field(default=64)
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.05)
    lora_bias: str = field(default="none", metadata={"help": "none, all or lora_only."})
    mm_projector_lr: float | None = field(default=None, metadata={"help": "Learning rate of the projector."})
    mm_vision_tower_lr: float | None = field(default=None, metadata={"help": "Learning rate of the vision tower."})
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "Batches of one modality (image / text-only) and similar length."}
    )
    # Names the LLaVA/M3 scripts use that transformers 5 dropped; kept so those command lines still run.
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "Warmup as a fraction of the steps (same as a float --warmup_steps < 1)."}
    )
    evaluation_strategy: str | None = field(default=None, metadata={"help": "Old name of --eval_strategy."})

    def __post_init__(self) -> None:
        if self.warmup_ratio is not None:
            if self.warmup_steps:
                raise ValueError("give --warmup_ratio or --warmup_steps, not both")
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        super().__post_init__()
