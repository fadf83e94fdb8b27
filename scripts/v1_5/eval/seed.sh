#!/bin/bash
# SEED-Bench (image questions): accuracy per scale. Usage: seed.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"

DATA="$EVAL_DIR/seed_bench"
generate llava.eval.model_vqa_loader "$DATA/answers/$CKPT" \
    --question-file "$DATA/llava-seed-bench.jsonl" \
    --image-folder "$DATA" \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    out=$(results_dir seed_bench "$scale")
    "$PYTHON" -m llava.eval.scoring.seed \
        --questions "$DATA/SEED-Bench.json" --data-type image \
        --answers "$(scale_file "$DATA/answers/$CKPT/merge.jsonl" "$scale")" \
        --output "$out/results.json" --per-sample "$out/per_sample.json"
done
