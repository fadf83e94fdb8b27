#!/bin/bash
# MSVD-QA (IG-VLM's sheet): open-ended answers per scale; exact match, and the GPT judge with JUDGE_MODEL. Usage: msvd.sh [SCALES].
source "$(dirname "$0")/common.sh"
open_ended msvd "$SHEETS/open_ended_qa/MSVD_QA.csv" "${VIDEOS:-$VIDEO_DIR/msvd/videos/%s.avi}"
