#!/bin/bash
# VQAv2 test-dev: the EvalAI submission file per scale (scores come from the server, so the sweep has none).
# Usage: vqav2.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"

SPLIT="llava_vqav2_mscoco_test-dev2015"
DATA="$EVAL_DIR/vqav2"
generate llava.eval.model_vqa_loader "$DATA/answers/$SPLIT/$CKPT" \
    --question-file "$DATA/$SPLIT.jsonl" \
    --image-folder "$DATA/test2015" \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    "$PYTHON" -m llava.eval.scoring.vqav2 submit \
        --question-file "$DATA/llava_vqav2_mscoco_test2015.jsonl" \
        --answers "$(scale_file "$DATA/answers/$SPLIT/$CKPT/merge.jsonl" "$scale")" \
        --output "$DATA/answers_upload/$SPLIT/${CKPT}_s$scale.json"
done
