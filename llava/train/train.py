"""Train LLaVA/M3: `python -m llava.train.train --model_name_or_path ... --data_path ... --output_dir ...`.

Runs the same under `torchrun --nproc_per_node N -m llava.train.train` and `deepspeed --module
llava.train.train` (with `--deepspeed scripts/zero3.json`). With `--matryoshka_vis_token_scale
"1,9,36,144,576"` the loss is the M3 objective: the mean over the budgets of the language-model
loss, the vision tower and projector running once per step. If `--output_dir` already holds
`checkpoint-*` folders the run resumes from the newest complete one (same step, same data order), as
LLaVA does; folders cut off by a kill mid-save are skipped with a warning (see `llava.train.checkpoints`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import HfArgumentParser, set_seed

from llava.optional import optional_dependency
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
from llava.train.checkpoints import last_complete_checkpoint, remove_unfinished, require_complete
from llava.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, VisualTokenBudget
from llava.train.model_setup import build_model, load_image_processor, load_tokenizer
from llava.train.preprocess import ConversationTemplate
from llava.train.trainer import LLaVATrainer

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def build_trainer(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> LLaVATrainer:
    """Tokenizer, model, validated dataset and trainer, ready to `train()`."""
    _configure_logging(training_args)
    if training_args.deepspeed:
        _init_deepspeed_comm(training_args)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args, training_args)
    model = build_model(model_args, training_args, tokenizer)
    llava_model = model.get_base_model() if training_args.lora_enable else model
    multimodal = llava_model.get_vision_tower() is not None
    image_processor = load_image_processor(model_args.model_name_or_path, llava_model.config)
    dataset = LazySupervisedDataset(
        data_args.data_path,
        data_args.image_folder,
        tokenizer,
        ConversationTemplate.from_name(model_args.version, llava_model.config.mm_use_im_start_end),
        image_processor,
        llava_model.config,
        VisualTokenBudget.from_model(llava_model) if multimodal else None,
        training_args.model_max_length,
        data_args.overlong_samples,
    )
    return LLaVATrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorForSupervisedDataset(tokenizer.pad_token_id),
        processing_class=tokenizer,
        image_processor=image_processor,
    )


def train(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> LLaVATrainer:
    """Train (resuming when checkpoints exist) and save the final model; returns the trainer."""
    trainer = build_trainer(model_args, data_args, training_args)
    trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    # No rank may exit while the main one still writes: a process leaving mid-collective aborts the job.
    trainer.accelerator.wait_for_everyone()
    return trainer


def resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """`--resume_from_checkpoint` (which must be complete), else the newest complete `checkpoint-*` in the
    output folder, else None. The main process deletes what a save killed mid-way left behind."""
    output_dir = Path(training_args.output_dir) if training_args.output_dir else None
    if output_dir is not None and output_dir.is_dir() and training_args.should_save:
        remove_unfinished(output_dir)
    if training_args.resume_from_checkpoint:
        return require_complete(training_args.resume_from_checkpoint)
    if output_dir is not None and output_dir.is_dir():
        return last_complete_checkpoint(output_dir)
    return None


def _init_deepspeed_comm(training_args: TrainingArguments) -> None:
    """Let DeepSpeed see the process group before ZeRO-3 partitions the model in `from_pretrained`.

    Accelerate does this itself on GPUs; with `--use_cpu` (DS_ACCELERATOR=cpu, gloo) it sets up
    torch.distributed alone and `deepspeed.zero.Init` would believe it runs on one process.
    """
    with optional_dependency():
        import deepspeed

    if training_args.world_size > 1 and not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=training_args.ddp_backend or "gloo", auto_mpi_discovery=False)


def _configure_logging(training_args: TrainingArguments) -> None:
    # Our warnings (e.g. truncated samples) once, from the main process.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("llava").setLevel(logging.INFO if training_args.should_log else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> LLaVATrainer:
    trainer = train(*parse_args(argv))
    if torch.distributed.is_initialized():
        # The DeepSpeed engine sits in reference cycles with handles of communication it started; collected
        # only at interpreter shutdown, they take gloo's worker threads down with the interpreter (SIGABRT).
        # Collect them now, with every rank past the barrier, then close the process group.
        trainer.accelerator.free_memory()
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return trainer


if __name__ == "__main__":
    main()
