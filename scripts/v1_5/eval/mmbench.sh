#!/bin/bash
# MMBench dev: CircularEval accuracy per scale and the upload spreadsheets. Usage: mmbench.sh [SCALES]; see common.sh.
# ALL_ROUNDS=1 also asks every option rotation (4x the questions); by default, as LLaVA, only round 0,
# and CircularEval uses the TSV's own rotated copies.
source "$(dirname "$0")/common.sh"

SPLIT="${SPLIT:-mmbench_dev_20230712}"
LANG_ARG="${LANG_ARG:-en}"
BENCH="${BENCH:-mmbench}"
DATA="$EVAL_DIR/$BENCH"
ROUNDS=()
if [[ "${ALL_ROUNDS:-0}" == 1 ]]; then
    ROUNDS=(--all-rounds)
fi
generate llava.eval.model_vqa_mmbench "$DATA/answers/$SPLIT/$CKPT" \
    --question-file "$DATA/$SPLIT.tsv" \
    --single-pred-prompt \
    --lang "$LANG_ARG" \
    ${ROUNDS[@]+"${ROUNDS[@]}"} \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    out=$(results_dir "$BENCH" "$scale")
    "$PYTHON" -m llava.eval.scoring.mmbench \
        --tsv "$DATA/$SPLIT.tsv" \
        --answers "$(scale_file "$DATA/answers/$SPLIT/$CKPT/merge.jsonl" "$scale")" \
        --submission "$DATA/answers_upload/$SPLIT/${CKPT}_s$scale.xlsx" \
        --output "$out/results.json" --per-sample "$out/per_sample.json"
done
