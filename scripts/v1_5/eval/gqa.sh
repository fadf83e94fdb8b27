#!/bin/bash
# GQA test-dev balanced: accuracy per scale, plus GQA's prediction files. Usage: gqa.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"

SPLIT="llava_gqa_testdev_balanced"
DATA="$EVAL_DIR/gqa"
generate llava.eval.model_vqa_loader "$DATA/answers/$SPLIT/$CKPT" \
    --question-file "$DATA/$SPLIT.jsonl" \
    --image-folder "$DATA/data/images" \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    answers=$(scale_file "$DATA/answers/$SPLIT/$CKPT/merge.jsonl" "$scale")
    out=$(results_dir gqa "$scale")
    "$PYTHON" -m llava.eval.scoring.gqa score \
        --questions "$DATA/data/testdev_balanced_questions.json" \
        --answers "$answers" \
        --output "$out/results.json" --per-sample "$out/per_sample.json"
    # For GQA's own eval.py (consistency, validity, plausibility):
    "$PYTHON" -m llava.eval.scoring.gqa convert \
        --answers "$answers" \
        --output "$DATA/answers/$SPLIT/$CKPT/testdev_balanced_predictions_s$scale.json"
done
