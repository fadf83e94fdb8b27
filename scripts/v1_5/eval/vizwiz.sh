#!/bin/bash
# VizWiz-VQA test: the submission file per scale (scores come from the server). Usage: vizwiz.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"

DATA="$EVAL_DIR/vizwiz"
generate llava.eval.model_vqa_loader "$DATA/answers/$CKPT" \
    --question-file "$DATA/llava_test.jsonl" \
    --image-folder "$DATA/test" \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    "$PYTHON" -m llava.eval.scoring.vizwiz submit \
        --question-file "$DATA/llava_test.jsonl" \
        --answers "$(scale_file "$DATA/answers/$CKPT/merge.jsonl" "$scale")" \
        --output "$DATA/answers_upload/${CKPT}_s$scale.json"
done
