# Sourced by the scripts in this folder: IG-VLM's video benchmarks at every visual-token budget.
#
#   bash scripts/video/<benchmark>.sh [SCALES]          e.g. 576,144,36,9,1 (the default) or 36
#
# The settings of scripts/v1_5/eval/common.sh apply (MODEL_PATH, CKPT, CONV_MODE, DEVICE, EVAL_DIR,
# RESULTS_DIR, GEN_ARGS, PYTHON, CUDA_VISIBLE_DEVICES: one chunk per GPU), with MODEL_PATH defaulting
# to the LLaVA-NeXT M3 checkpoint IG-VLM was run with. More environment (all optional):
#   VIDEO_DIR    default $EVAL_DIR/video: <benchmark>/videos/ per benchmark, answers/ written here
#   SHEETS       IG-VLM's question sheets, its data/ folder (default $VIDEO_DIR/sheets)
#   VIDEOS       the video path with %s for the sheet's video_name (default: the benchmark's folder)
#   LLM_SIZE     which of IG-VLM's prompts: 7b (default, the M3 release's run), 13b, 34b
#   JUDGE_MODEL  GPT judge of the open-ended benchmarks (e.g. gpt-3.5-turbo; needs OPENAI_API_KEY);
#                unset: exact match only, nothing leaves the machine
#
# Results: $RESULTS_DIR/<name>/<scale>/results.json and per_sample.json for `python -m llava.eval.sweep`;
# the judged scores of an open-ended benchmark go to <name>_gpt/, its exact match to <name>/.

MODEL_PATH="${MODEL_PATH:-mucai/llava-next-vicuna-7b-m3}"
# shellcheck source=../v1_5/eval/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../v1_5/eval/common.sh"
VIDEO_DIR="${VIDEO_DIR:-$EVAL_DIR/video}"
SHEETS="${SHEETS:-$VIDEO_DIR/sheets}"
LLM_SIZE="${LLM_SIZE:-7b}"

# answers NAME SCALE: the merged answers file of sheet NAME at SCALE.
answers() {
    scale_file "$VIDEO_DIR/answers/$CKPT/$1/merge.jsonl" "$2"
}

# answer_sheet NAME SHEET VIDEOS TASK: answer the sheet at every scale, one chunk per GPU.
answer_sheet() {
    generate llava.eval.model_video_qa "$VIDEO_DIR/answers/$CKPT/$1" \
        --question-file "$2" --path-video "$3" --task "$4" --llm-size "$LLM_SIZE"
}

# multiple_choice NAME SHEET VIDEOS: answers, then accuracy per scale into $RESULTS_DIR/NAME/<scale>/.
multiple_choice() {
    local scale out
    answer_sheet "$1" "$2" "$3" multiple-choice
    for scale in "${SCALE_LIST[@]}"; do
        out=$(results_dir "$1" "$scale")
        "$PYTHON" -m llava.eval.scoring.video_choice --question-file "$2" --answers "$(answers "$1" "$scale")" \
            --output "$out/results.json" --per-sample "$out/per_sample.json"
    done
}

# score_exact RESULT_NAME SHEET ANSWERS_NAME [SHEET_2 ANSWERS_NAME_2]: exact match per scale into RESULT_NAME/
# (with a second sheet: of the consistency pair).
score_exact() {
    local name=$1 sheet=$2 answers_name=$3 scale out
    local pair=()
    for scale in "${SCALE_LIST[@]}"; do
        if [[ $# -ge 5 ]]; then
            pair=(--criterion consistency --question-file-2 "$4" --answers-2 "$(answers "$5" "$scale")")
        fi
        out=$(results_dir "$name" "$scale")
        "$PYTHON" -m llava.eval.scoring.video_open_ended --question-file "$sheet" \
            --answers "$(answers "$answers_name" "$scale")" ${pair[@]+"${pair[@]}"} \
            --output "$out/results.json" --per-sample "$out/per_sample.json"
    done
}

# score_judged RESULT_NAME CRITERION SHEET ANSWERS_NAME [SHEET_2 ANSWERS_NAME_2]: with JUDGE_MODEL, the judge's
# CRITERION score per scale into RESULT_NAME/ (its replies cached there in reviews.jsonl); without it, nothing.
score_judged() {
    local name=$1 criterion=$2 sheet=$3 answers_name=$4 scale out
    local pair=()
    [[ -n "${JUDGE_MODEL:-}" ]] || return 0
    for scale in "${SCALE_LIST[@]}"; do
        if [[ $# -ge 6 ]]; then
            pair=(--question-file-2 "$5" --answers-2 "$(answers "$6" "$scale")")
        fi
        out=$(results_dir "$name" "$scale")
        "$PYTHON" -m llava.eval.scoring.video_open_ended --criterion "$criterion" --question-file "$sheet" \
            --answers "$(answers "$answers_name" "$scale")" ${pair[@]+"${pair[@]}"} \
            --judge-model "$JUDGE_MODEL" --reviews "$out/reviews.jsonl" \
            --output "$out/results.json" --per-sample "$out/per_sample.json"
    done
}

# open_ended NAME SHEET VIDEOS: answers, exact match into NAME/ and, with JUDGE_MODEL, IG-VLM's judged
# accuracy (criterion match) into NAME_gpt/.
open_ended() {
    answer_sheet "$1" "$2" "$3" open-ended
    score_exact "$1" "$2" "$1"
    score_judged "$1_gpt" match "$2" "$1"
}
