#!/bin/bash
# The text-generation benchmark on ActivityNet videos (IG-VLM's sheets): answers to Generic_QA, Temporal_QA and
# the consistency pair per scale. Exact match into textgen_{generic,temporal,consistency}/; with JUDGE_MODEL the
# GPT scores (0-5) CI, DO, CU (Generic_QA), TU (Temporal_QA) and CO (the pair) into textgen_{ci,do,cu,tu,co}_gpt/.
# Usage: textgen.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"
VIDEOS="${VIDEOS:-$VIDEO_DIR/activitynet/videos/%s.mp4}"
TEXTGEN="$SHEETS/text_generation_benchmark"

for sheet in Generic_QA Temporal_QA Consistency_QA1 Consistency_QA2; do
    answer_sheet "textgen_$sheet" "$TEXTGEN/$sheet.csv" "$VIDEOS" open-ended
done

PAIR=("$TEXTGEN/Consistency_QA2.csv" textgen_Consistency_QA2)
score_exact textgen_generic "$TEXTGEN/Generic_QA.csv" textgen_Generic_QA
score_exact textgen_temporal "$TEXTGEN/Temporal_QA.csv" textgen_Temporal_QA
score_exact textgen_consistency "$TEXTGEN/Consistency_QA1.csv" textgen_Consistency_QA1 "${PAIR[@]}"
score_judged textgen_ci_gpt correctness "$TEXTGEN/Generic_QA.csv" textgen_Generic_QA
score_judged textgen_do_gpt detail "$TEXTGEN/Generic_QA.csv" textgen_Generic_QA
score_judged textgen_cu_gpt context "$TEXTGEN/Generic_QA.csv" textgen_Generic_QA
score_judged textgen_tu_gpt temporal "$TEXTGEN/Temporal_QA.csv" textgen_Temporal_QA
score_judged textgen_co_gpt consistency "$TEXTGEN/Consistency_QA1.csv" textgen_Consistency_QA1 "${PAIR[@]}"
