#!/usr/bin/env bash
# CI: lmms-eval 0.7.3 for real, in its own environment (built by scripts/ci/lmms_eval_env.sh).
#
# 1. The plugin's tests, required to run there (M3_REQUIRE_LMMS_EVAL=1: a missing lmms-eval fails them).
# 2. lmms-eval's own CLI on the local task m3_shapes (30 held-out M3-Shapes images) at 576 and 1 visual
#    tokens with the shipped model, and llava.eval.shapes_demo on the same images in the same environment;
#    scripts/lmms_eval/compare_shapes.py fails on any difference in the scores (overall, by difficulty, by
#    question type). lmms-eval exits 0 even when it fails: the comparison reads its output files instead.
# 3. A run that cannot work (no such checkpoint) must fail scripts/lmms_eval/eval.sh, though lmms-eval exits 0.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PY=$(bash scripts/ci/lmms_eval_env.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 LMMS_EVAL_DATASETS_CACHE="$work/datasets-cache"
start=$SECONDS

M3_REQUIRE_LMMS_EVAL=1 "$PY" -m pytest -q -p no:cacheprovider tests/eval/test_lmms_plugin.py

data=playground/data/lmms_eval/m3_shapes  # where the task YAML files read test.parquet
"$PY" -m llava.eval.lmms_eval_plugin.shapes_task --out "$data" --num-images 30
PY="$PY" bash scripts/lmms_eval/eval.sh playground/shapes-m3-tiny m3_shapes 576,1 "$work/lmms_eval" \
    --batch_size 64 --device cpu >"$work/lmms_eval.log" 2>&1 || { tail -n 50 "$work/lmms_eval.log"; exit 1; }
"$PY" -m llava.eval.shapes_demo --num-images 30 --scales 576,1 --data-dir "$work/harness" --out-dir "$work/harness" \
    >"$work/harness.log" 2>&1 || { tail -n 50 "$work/harness.log"; exit 1; }
"$PY" scripts/lmms_eval/compare_shapes.py --data-dir "$data" --harness "$work/harness/shapes_results.json" \
    --lmms-eval-output "$work/lmms_eval" --scales 576,1 || { tail -n 50 "$work/lmms_eval.log"; exit 1; }

if PY="$PY" bash scripts/lmms_eval/eval.sh "$work/no-such-checkpoint" m3_shapes 576 "$work/failing" \
    --device cpu >"$work/failing.log" 2>&1; then
    echo "scripts/lmms_eval/eval.sh passed a run that cannot have worked (see $work/failing.log)" >&2
    exit 1
fi
echo "lmms-eval check passed in $((SECONDS - start)) s"
