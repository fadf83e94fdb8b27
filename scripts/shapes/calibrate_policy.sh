#!/usr/bin/env bash
# Calibrate the adaptive budget (`--matryoshka_vis_token_scale auto`) of an M3-Shapes checkpoint and
# store it beside the checkpoint as matryoshka_policy.json (see docs/Shapes.md and docs/Evaluation.md).
#
#   bash scripts/shapes/calibrate_policy.sh [MODEL_PATH] [TARGET]
#
# TARGET is calibrate_scale's target, default "--max-drop 1" (at most 1 point below 576 tokens); e.g.
# "--max-tokens 100". The calibration questions are a fresh M3-Shapes split (seed SEED, default 24680),
# never the held-out test split (seed 98765) the demo reports on. The path is the one any benchmark
# takes: the harness answers at every scale in one pass (recording p_first), the scorer writes
# per_sample.json, and calibrate_scale reads both. Extra environment: SEED, NUM_IMAGES (default 300),
# WORK (scratch folder), BATCH (prompts per generate call), PY (python).
set -euo pipefail
cd "$(dirname "$0")/../.."

MODEL_PATH=${1:-playground/shapes-m3-tiny}
TARGET=${2:---max-drop 1}
SEED=${SEED:-24680}
NUM_IMAGES=${NUM_IMAGES:-300}
WORK=${WORK:-playground/data/shapes-calibration}
BATCH=${BATCH:-64}
PY=${PY:-python}
SCALES=(1 9 36 144 576)

"$PY" -m llava.data.shapes --out "$WORK" --split test --seed "$SEED" --num-images "$NUM_IMAGES"
"$PY" -m llava.eval.scoring.shapes questions --split-file "$WORK/test.json" --output "$WORK/questions.jsonl"
"$PY" -m llava.eval.model_vqa_loader --model-path "$MODEL_PATH" --question-file "$WORK/questions.jsonl" \
    --image-folder "$WORK" --answers-file "$WORK/answers/answers.jsonl" --temperature 0 --max_new_tokens 3 \
    --batch-size "$BATCH" --num-workers 0 --device cpu --overwrite \
    --matryoshka_vis_token_scale "$(IFS=,; echo "${SCALES[*]}")"
for scale in "${SCALES[@]}"; do
    out="$WORK/results/shapes/$scale"
    mkdir -p "$out"
    cp "$WORK/answers/answers_s$scale.jsonl" "$out/answers.jsonl"
    "$PY" -m llava.eval.scoring.shapes score --split-file "$WORK/test.json" --answers "$out/answers.jsonl" \
        --output "$out/results.json" --per-sample "$out/per_sample.json"
done
# shellcheck disable=SC2086  # TARGET is a flag and its value
"$PY" -m llava.eval.calibrate_scale --results-dir "$WORK/results/shapes" $TARGET --model-path "$MODEL_PATH"
