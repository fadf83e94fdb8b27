#!/usr/bin/env bash
# Train the tiny M3-Shapes model through llava.train.train (the recipe behind playground/shapes-m3-tiny).
#
#   bash scripts/shapes/train_tiny.sh [OUTPUT_DIR] [SCALES]
#
# SCALES defaults to the five M3 budgets "1,9,36,144,576"; pass "576" for the single-scale baseline
# (the paper's Table 4 comparison). Extra environment: MAX_STEPS, LR, BATCH, SEED, WORK (scratch folder).
# Runs on CPU (OMP_NUM_THREADS threads); on a CUDA machine the Trainer uses the GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUTPUT_DIR=${1:-playground/shapes-m3-tiny}
SCALES=${2:-1,9,36,144,576}
WORK=${WORK:-playground/data/shapes-work}
MAX_STEPS=${MAX_STEPS:-400}
LR=${LR:-2e-3}
BATCH=${BATCH:-16}
SEED=${SEED:-0}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

# 1. Data: the default train split (2000 images, seed 1234) of the current DATA_VERSION, regrouped into
#    one conversation per image (all its questions + a scene caption as the last turn).
[ -f "$WORK/data/train.json" ] || "$PY" -m llava.data.shapes --out "$WORK/data" --split train
[ -f "$WORK/data/train_conversations.json" ] || "$PY" scripts/shapes/make_conversations.py --data "$WORK/data" --seed "$SEED"
# 2. Starting point: small Llama + word-level tokenizer, and a CLIP tower with colour/position init.
[ -f "$WORK/init/llm/config.json" ] || "$PY" scripts/shapes/init_tiny_model.py --out "$WORK/init" --seed "$SEED"

# 3. Train everything (tower, projector, language model) on the M3 objective.
"$PY" -m llava.train.train \
    --model_name_or_path "$WORK/init/llm" \
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
    --matryoshka_vis_token_scale "$SCALES" \
    --output_dir "$OUTPUT_DIR" \
    --max_steps "$MAX_STEPS" \
    --per_device_train_batch_size "$BATCH" \
    --learning_rate "$LR" \
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
    --dataloader_num_workers "${WORKERS:-2}" \
    --use_cpu "${USE_CPU:-False}"
