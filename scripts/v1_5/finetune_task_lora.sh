#!/usr/bin/env bash
# LoRA finetuning of a finished LLaVA/M3 checkpoint on your own task data (docs/Finetune_Custom_Data.md),
# keeping all five M3 budgets. Set DATA_PATH, IMAGE_FOLDER and MODEL; merge the result with
# scripts/merge_lora_weights.py --model-base "$MODEL". Global batch 128 whatever the GPU count.
set -euo pipefail

NUM_GPUS=${NUM_GPUS:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)}
if [ "${NUM_GPUS:-0}" -lt 1 ]; then NUM_GPUS=1; fi
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-16}
GRAD_ACC=$(( GLOBAL_BATCH / (PER_DEVICE_BATCH * NUM_GPUS) ))
if [ "$GRAD_ACC" -lt 1 ] || [ $(( GRAD_ACC * PER_DEVICE_BATCH * NUM_GPUS )) -ne "$GLOBAL_BATCH" ]; then
    echo "global batch $GLOBAL_BATCH is not a multiple of $PER_DEVICE_BATCH per GPU x $NUM_GPUS GPUs: set PER_DEVICE_BATCH" >&2
    exit 1
fi

deepspeed --num_gpus "$NUM_GPUS" --module llava.train.train \
    --deepspeed ./scripts/zero3.json \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --model_name_or_path "${MODEL:-mucai/llava-v1.5-7b-m3}" \
    --version v1 \
    --data_path "${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}" \
    --image_folder "${IMAGE_FOLDER:-./playground/data}" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --matryoshka_vis_token_scale "1,9,36,144,576" \
    --bf16 True \
    --output_dir "${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-m3-task-lora}" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --gradient_accumulation_steps "$GRAD_ACC" \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-4 \
    --weight_decay 0. \
    --warmup_steps 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to "${REPORT_TO:-wandb}"
