#!/bin/bash
# POPE (COCO val2014, adversarial/popular/random): F1 per scale. Usage: pope.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"

DATA="$EVAL_DIR/pope"
generate llava.eval.model_vqa_loader "$DATA/answers/$CKPT" \
    --question-file "$DATA/llava_pope_test.jsonl" \
    --image-folder "$DATA/val2014" \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    out=$(results_dir pope "$scale")
    "$PYTHON" -m llava.eval.scoring.pope \
        --answers "$(scale_file "$DATA/answers/$CKPT/merge.jsonl" "$scale")" \
        --question-file "$DATA/llava_pope_test.jsonl" --match order \
        --labels adversarial="$DATA/coco/coco_pope_adversarial.json" \
        --labels popular="$DATA/coco/coco_pope_popular.json" \
        --labels random="$DATA/coco/coco_pope_random.json" \
        --output "$out/results.json" --per-sample "$out/per_sample.json"
done
