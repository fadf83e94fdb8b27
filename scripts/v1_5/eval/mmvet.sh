#!/bin/bash
# MM-Vet: answers per scale and the file for MM-Vet's official GPT-4 grader. Usage: mmvet.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"

DATA="$EVAL_DIR/mm-vet"
generate llava.eval.model_vqa "$DATA/answers/$CKPT" \
    --question-file "$DATA/llava-mm-vet.jsonl" \
    --image-folder "$DATA/images" \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    "$PYTHON" -m llava.eval.scoring.mmvet submit \
        --answers "$(scale_file "$DATA/answers/$CKPT/merge.jsonl" "$scale")" \
        --output "$DATA/results/${CKPT}_s$scale.json"
done
