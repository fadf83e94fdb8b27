#!/bin/bash
# ScienceQA test (IMG column = the image subset): accuracy per scale. Usage: sqa.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"

DATA="$EVAL_DIR/scienceqa"
generate llava.eval.model_vqa_science "$DATA/answers/$CKPT" \
    --question-file "$DATA/llava_test_CQM-A.json" \
    --image-folder "$DATA/images/test" \
    --single-pred-prompt \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    out=$(results_dir scienceqa "$scale")
    "$PYTHON" -m llava.eval.scoring.scienceqa \
        --problems "$DATA/problems.json" --split-file "$DATA/pid_splits.json" --split test \
        --answers "$(scale_file "$DATA/answers/$CKPT/merge.jsonl" "$scale")" \
        --output "$out/results.json" --per-sample "$out/per_sample.json"
done
