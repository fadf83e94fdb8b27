#!/bin/bash
# MMBench-CN dev: as mmbench.sh, with the Chinese TSV and answer prompt. Usage: mmbench_cn.sh [SCALES]; see common.sh.
SPLIT="${SPLIT:-mmbench_dev_cn_20231003}" LANG_ARG=cn BENCH=mmbench_cn exec bash "$(dirname "$0")/mmbench.sh" "$@"
