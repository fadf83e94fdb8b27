# Sourced by the scripts in this folder: settings, the scale list, chunked answer generation.
#
#   bash scripts/v1_5/eval/<benchmark>.sh [SCALES]          e.g. 576,144,36,9,1 (the default) or 36
#
# Environment (all optional):
#   MODEL_PATH   checkpoint (default mucai/llava-v1.5-7b-m3)     CKPT     name in the output paths (default: its basename)
#   CONV_MODE    conversation template (default vicuna_v1)       DEVICE   cuda, cpu or mps (default: the best available)
#   EVAL_DIR     benchmark data (default ./playground/data/eval)
#   RESULTS_DIR  scores, one <benchmark>/<scale>/results.json each (default $EVAL_DIR/results/$CKPT), the
#                input of `python -m llava.eval.sweep --results-dir $RESULTS_DIR`
#   CUDA_VISIBLE_DEVICES  one answer-generation process (a chunk of the questions) per listed GPU
#   GEN_ARGS     more flags for answer generation, e.g. "--batch-size 8 --num-workers 8"
#   PYTHON       interpreter (default python)
#
# Every image goes through the vision tower once and is answered at every scale. With several
# scales the answers of scale s are in <answers>_s<s>.jsonl; with one, in <answers>.jsonl itself.
# A stopped run resumes where it stopped when started again with the same arguments.

set -euo pipefail

SCALES="${1:-576,144,36,9,1}"
MODEL_PATH="${MODEL_PATH:-mucai/llava-v1.5-7b-m3}"
CKPT="${CKPT:-$(basename "$MODEL_PATH")}"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
RESULTS_DIR="${RESULTS_DIR:-$EVAL_DIR/results/$CKPT}"
PYTHON="${PYTHON:-python}"
IFS=',' read -ra SCALE_LIST <<< "$SCALES"
DEVICE_ARGS=()
if [[ -n "${DEVICE:-}" ]]; then
    DEVICE_ARGS=(--device "$DEVICE")
fi
read -ra EXTRA_GEN_ARGS <<< "${GEN_ARGS:-}"

# scale_file FILE SCALE: the answers file llava.eval writes for SCALE when run with $SCALES.
scale_file() {
    if [[ ${#SCALE_LIST[@]} -gt 1 ]]; then
        echo "${1%.jsonl}_s$2.jsonl"
    else
        echo "$1"
    fi
}

# results_dir BENCHMARK SCALE: where a scorer writes results.json and per_sample.json for the sweep.
results_dir() {
    echo "$RESULTS_DIR/$1/$2"
}

# generate MODULE OUT_DIR [ARGS...]: answer with `python -m MODULE`, one process per GPU of
# CUDA_VISIBLE_DEVICES, each a chunk; the chunks of each scale are merged into
# $(scale_file OUT_DIR/merge.jsonl SCALE) in question order.
generate() {
    local module=$1 out_dir=$2
    shift 2
    local gpus chunks idx pid failed=0
    IFS=',' read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-0}"
    chunks=${#gpus[@]}
    mkdir -p "$out_dir"
    local pids=()
    for idx in $(seq 0 $((chunks - 1))); do
        CUDA_VISIBLE_DEVICES="${gpus[$idx]}" "$PYTHON" -m "$module" \
            --model-path "$MODEL_PATH" \
            --answers-file "$out_dir/${chunks}_${idx}.jsonl" \
            --num-chunks "$chunks" \
            --chunk-idx "$idx" \
            --conv-mode "$CONV_MODE" \
            --matryoshka_vis_token_scale "$SCALES" \
            ${DEVICE_ARGS[@]+"${DEVICE_ARGS[@]}"} \
            "$@" \
            ${EXTRA_GEN_ARGS[@]+"${EXTRA_GEN_ARGS[@]}"} &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    if [[ $failed -ne 0 ]]; then
        echo "answer generation failed; fix the error above and rerun: finished answers are kept" >&2
        return 1
    fi
    local scale merged
    for scale in "${SCALE_LIST[@]}"; do
        merged=$(scale_file "$out_dir/merge.jsonl" "$scale")
        : > "$merged"
        for idx in $(seq 0 $((chunks - 1))); do
            cat "$(scale_file "$out_dir/${chunks}_${idx}.jsonl" "$scale")" >> "$merged"
        done
    done
}
