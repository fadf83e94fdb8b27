#!/bin/bash
# ActivityNet-QA (IG-VLM's sheet): open-ended answers per scale; exact match, and the GPT judge with JUDGE_MODEL.
# Usage: activitynet.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"
open_ended activitynet "$SHEETS/open_ended_qa/ActivityNet_QA.csv" "${VIDEOS:-$VIDEO_DIR/activitynet/videos/%s.mp4}"
