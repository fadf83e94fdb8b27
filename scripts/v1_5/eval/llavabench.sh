#!/bin/bash
# LLaVA-Bench (In-the-Wild): answers per scale and the GPT judge's prompts; with JUDGE_MODEL (e.g.
# gpt-4-0314, needs OPENAI_API_KEY) also the reviews and the relative score. Usage: llavabench.sh [SCALES].
source "$(dirname "$0")/common.sh"

DATA="$EVAL_DIR/llava-bench-in-the-wild"
RULE="${RULE:-$DATA/rule.json}"
generate llava.eval.model_vqa "$DATA/answers/$CKPT" \
    --question-file "$DATA/questions.jsonl" \
    --image-folder "$DATA/images" \
    --temperature 0

for scale in "${SCALE_LIST[@]}"; do
    reviews="$DATA/reviews/${CKPT}_s$scale.jsonl"
    "$PYTHON" -m llava.eval.scoring.llava_bench review \
        --questions "$DATA/questions.jsonl" --context "$DATA/context.jsonl" \
        --reference "$DATA/answers_gpt4.jsonl" --rule "$RULE" \
        --answers "$(scale_file "$DATA/answers/$CKPT/merge.jsonl" "$scale")" \
        --output "$reviews" ${JUDGE_MODEL:+--judge-model "$JUDGE_MODEL"}
    if [[ -n "${JUDGE_MODEL:-}" ]]; then
        "$PYTHON" -m llava.eval.scoring.llava_bench summarize --reviews "$reviews" \
            --output "$(results_dir llava_bench "$scale")/results.json"
    fi
done
