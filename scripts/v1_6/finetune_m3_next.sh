#!/usr/bin/env bash
# The M3 recipe on LLaVA-NeXT (anyres): every crop's 24x24 grid is pooled to each budget (576/144/36/9/1),
# crops are merged spatially with image_newline (spatial_unpad). Starts from a LLaVA-NeXT Vicuna checkpoint;
# max length 4096 fits the base image plus four crops at 576 tokens each. Global batch 128 whatever the GPU count.
set -euo pipefail

NUM_GPUS=${NUM_GPUS:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)}
if [ "${NUM_GPUS:-0}" -lt 1 ]; then NUM_GPUS=1; fi
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-4}
GRAD_ACC=$(( GLOBAL_BATCH / (PER_DEVICE_BATCH * NUM_GPUS) ))
if [ "$GRAD_ACC" -lt 1 ] || [ $(( GRAD_ACC * PER_DEVICE_BATCH * NUM_GPUS )) -ne "$GLOBAL_BATCH" ]; then
    echo "global batch $GLOBAL_BATCH is not a multiple of $PER_DEVICE_BATCH per GPU x $NUM_GPUS GPUs: set PER_DEVICE_BATCH" >&2
    exit 1
fi

deepspeed --num_gpus "$NUM_GPUS" --module llava.train.train \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path "${MODEL:-liuhaotian/llava-v1.6-vicuna-7b}" \
    --version v1 \
    --data_path "${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}" \
    --image_folder "${IMAGE_FOLDER:-./playground/data}" \
    --vision_tower openai/clip-vit-large-patch14-336 \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio anyres \
    --image_grid_pinpoints "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]" \
    --mm_patch_merge_type spatial_unpad \
    --group_by_modality_length True \
    --unfreeze_mm_vision_tower True \
    --mm_vision_tower_lr 2e-6 \
    --matryoshka_vis_token_scale "1,9,36,144,576" \
    --bf16 True \
    --output_dir "${OUTPUT_DIR:-./checkpoints/llava-next-vicuna-7b-m3}" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --gradient_accumulation_steps "$GRAD_ACC" \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 1000 \
    --save_total_limit 1 \
    --learning_rate 2e-5 \
    --weight_decay 0. \
    --warmup_steps 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 4096 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to "${REPORT_TO:-wandb}"
