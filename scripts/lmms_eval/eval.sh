#!/usr/bin/env bash
# lmms-eval with the `llava_m3` plugin at several visual-token budgets, one output folder per budget.
#
#   bash scripts/lmms_eval/eval.sh MODEL TASKS SCALES OUTPUT [more lmms-eval flags]
#   bash scripts/lmms_eval/eval.sh mucai/llava-next-vicuna-7b-m3 mme,mmbench_en_dev 576,144,36,9,1 results/lmms_eval
#
# Run from the repository root. lmms-eval names its output folder after `pretrained` alone
# (<output_path>/<model>/<date>_results.json), so runs at several budgets would land in one folder; each
# budget gets its own --output_path, OUTPUT/s<budget>. The plugin's tasks (m3_shapes, m3_shapes_mc) are on
# the task path. lmms-eval exits 0 even when a run fails, so this script checks that each run wrote a new
# results file and fails otherwise. PY: the python of an environment with lmms-eval (default: python;
# scripts/ci/lmms_eval_env.sh builds one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [ $# -lt 4 ]; then
    echo "usage: bash scripts/lmms_eval/eval.sh MODEL TASKS SCALES OUTPUT [more lmms-eval flags]" >&2
    exit 2
fi
MODEL=$1 TASKS=$2 SCALES=$3 OUTPUT=$4
shift 4
PY=${PY:-python}

for scale in ${SCALES//,/ }; do
    out="$OUTPUT/s$scale"
    mkdir -p "$out"
    before=$(find "$out" -name '*_results.json' | wc -l)
    "$PY" -m lmms_eval --model llava_m3 \
        --model_args "pretrained=$MODEL,matryoshka_vis_token_scale=$scale" \
        --tasks "$TASKS" --include_path llava/eval/lmms_eval_plugin/tasks \
        --output_path "$out" --log_samples "$@"
    after=$(find "$out" -name '*_results.json' | wc -l)
    if [ "$after" -le "$before" ]; then
        echo "lmms-eval wrote no results for budget $scale under $out (it exits 0 on errors: see its log above)" >&2
        exit 1
    fi
done
