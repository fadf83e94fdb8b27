#!/bin/bash
# TextVQA val: answers at every scale, VQA accuracy per scale. Usage: textvqa.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"

DATA="$EVAL_DIR/textvqa"
QUESTIONS="$DATA/llava_textvqa_val_v051_ocr_qid.jsonl"
if [[ ! -f "$QUESTIONS" ]]; then  # LLaVA's file names questions by image id; give them TextVQA's ids once
    "$PYTHON" -m llava.eval.prepare_textvqa --question-file "$DATA/llava_textvqa_val_v051_ocr.jsonl" \
        --annotation-file "$DATA/TextVQA_0.5.1_val.json" --output "$QUESTIONS"
fi

generate llava.eval.model_vqa_loader "$DATA/answers/$CKPT" \
    --question-file "$QUESTIONS" \
    --image-folder "$DATA/train_images" \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    out=$(results_dir textvqa "$scale")
    "$PYTHON" -m llava.eval.scoring.textvqa \
        --annotation-file "$DATA/TextVQA_0.5.1_val.json" \
        --answers "$(scale_file "$DATA/answers/$CKPT/merge.jsonl" "$scale")" \
        --output "$out/results.json" --per-sample "$out/per_sample.json"
done
