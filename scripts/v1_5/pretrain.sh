#!/usr/bin/env bash
# Stage 1: pretrain the projector (mlp2x_gelu) on image-caption pairs; the LLM and the vision tower are frozen.
# Writes checkpoints/llava-v1.5-7b-pretrain/mm_projector.bin for finetune.sh --pretrain_mm_mlp_adapter.
# The GPU count is read from nvidia-smi (or NUM_GPUS); the global batch stays 256 by gradient accumulation.
set -euo pipefail

NUM_GPUS=${NUM_GPUS:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)}
if [ "${NUM_GPUS:-0}" -lt 1 ]; then NUM_GPUS=1; fi
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-32}
GRAD_ACC=$(( GLOBAL_BATCH / (PER_DEVICE_BATCH * NUM_GPUS) ))
if [ "$GRAD_ACC" -lt 1 ] || [ $(( GRAD_ACC * PER_DEVICE_BATCH * NUM_GPUS )) -ne "$GLOBAL_BATCH" ]; then
    echo "global batch $GLOBAL_BATCH is not a multiple of $PER_DEVICE_BATCH per GPU x $NUM_GPUS GPUs: set PER_DEVICE_BATCH" >&2
    exit 1
fi

deepspeed --num_gpus "$NUM_GPUS" --module llava.train.train \
    --deepspeed ./scripts/zero2.json \
    --model_name_or_path "${MODEL:-lmsys/vicuna-7b-v1.5}" \
    --version plain \
    --data_path ./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \
    --image_folder ./playground/data/LLaVA-Pretrain/images \
    --vision_tower openai/clip-vit-large-patch14-336 \
    --mm_projector_type mlp2x_gelu \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 True \
    --output_dir "${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain}" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --gradient_accumulation_steps "$GRAD_ACC" \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 24000 \
    --save_total_limit 1 \
    --learning_rate 1e-3 \
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
