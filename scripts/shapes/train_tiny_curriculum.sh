#!/usr/bin/env bash
# Budget curriculum for the tiny M3-Shapes model, through llava.train.train (see docs/Shapes.md).
#
#   bash scripts/shapes/train_tiny_curriculum.sh [OUTPUT_DIR]
#
# Stage 1 trains only the cheap budgets (--matryoshka_vis_token_scale 1,9, ~5x cheaper per step than
# all five) for many steps; stage 2 starts from stage 1's saved LLaVA checkpoint (--model_name_or_path)
# and trains all five budgets 1,9,36,144,576 for a shorter stage. Data, initialisation and the other
# flags are those of train_tiny.sh. Extra environment: STAGE1_STEPS, STAGE1_LR, STAGE2_STEPS, STAGE2_LR,
# BATCH, SEED, WORK (scratch folder), STAGE1_TIMEOUT / STAGE2_TIMEOUT (wall-clock limits, `timeout`).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUTPUT_DIR=${1:-playground/data/shapes-curriculum/m3}
WORK=${WORK:-playground/data/shapes-work}
STAGE1_DIR=${STAGE1_DIR:-$OUTPUT_DIR-stage1}
STAGE1_STEPS=${STAGE1_STEPS:-2000}
STAGE1_LR=${STAGE1_LR:-1e-3}
STAGE2_STEPS=${STAGE2_STEPS:-150}
STAGE2_LR=${STAGE2_LR:-5e-4}
STAGE1_TIMEOUT=${STAGE1_TIMEOUT:-1800}
STAGE2_TIMEOUT=${STAGE2_TIMEOUT:-600}
BATCH=${BATCH:-16}
SEED=${SEED:-0}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

# Data and starting point, exactly as train_tiny.sh makes them.
[ -f "$WORK/data/train.json" ] || "$PY" -m llava.data.shapes --out "$WORK/data" --split train
[ -f "$WORK/data/train_conversations.json" ] || "$PY" scripts/shapes/make_conversations.py --data "$WORK/data" --seed "$SEED"
[ -f "$WORK/init/llm/config.json" ] || "$PY" scripts/shapes/init_tiny_model.py --out "$WORK/init" --seed "$SEED"

# train START SCALES OUT STEPS LR LIMIT: one stage of llava.train.train (flags of train_tiny.sh).
train() {
    timeout "$6" "$PY" -m llava.train.train \
        --model_name_or_path "$1" \
        --version v1 \
        --data_path "$WORK/data/train_conversations.json" \
        --image_folder "$WORK/data" \
        --vision_tower "$WORK/init/clip" \
        --mm_projector_type mlp2x_gelu \
        --mm_vision_select_layer -2 \
        --mm_use_im_start_end False \
        --mm_use_im_patch_token False \
        --image_aspect_ratio pad \
        --unfreeze_mm_vision_tower True \
        --matryoshka_vis_token_scale "$2" \
        --output_dir "$3" \
        --max_steps "$4" \
        --per_device_train_batch_size "$BATCH" \
        --learning_rate "$5" \
        --weight_decay 0.0 \
        --adam_beta2 0.98 \
        --warmup_steps 0.05 \
        --lr_scheduler_type cosine \
        --max_grad_norm 1.0 \
        --model_max_length 1024 \
        --seed "$SEED" \
        --data_seed "$SEED" \
        --logging_steps 25 \
        --save_strategy no \
        --report_to none \
        --dataloader_num_workers "${WORKERS:-0}" \
        --use_cpu "${USE_CPU:-False}"
}

# Stage 1: cheap budgets only, many steps, from the fresh initialisation.
[ -f "$STAGE1_DIR/model.safetensors" ] || train "$WORK/init/llm" 1,9 "$STAGE1_DIR" "$STAGE1_STEPS" "$STAGE1_LR" "$STAGE1_TIMEOUT"
# Stage 2: all five budgets, starting from stage 1's checkpoint (a LLaVA checkpoint start point).
train "$STAGE1_DIR" 1,9,36,144,576 "$OUTPUT_DIR" "$STAGE2_STEPS" "$STAGE2_LR" "$STAGE2_TIMEOUT"
