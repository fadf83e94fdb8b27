#!/bin/bash
# MME: perception (and cognition) score per scale. Usage: mme.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"

DATA="$EVAL_DIR/MME"
generate llava.eval.model_vqa_loader "$DATA/answers/$CKPT" \
    --question-file "$DATA/llava_mme.jsonl" \
    --image-folder "$DATA/MME_Benchmark_release_version" \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    out=$(results_dir mme "$scale")
    "$PYTHON" -m llava.eval.scoring.mme \
        --answers "$(scale_file "$DATA/answers/$CKPT/merge.jsonl" "$scale")" \
        --gt-dir "$DATA/MME_Benchmark_release_version" \
        --write-eval-tool-dir "$DATA/eval_tool/answers/${CKPT}_s$scale" \
        --output "$out/results.json" --per-sample "$out/per_sample.json"
done
