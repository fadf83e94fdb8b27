#!/bin/bash
# MSRVTT-QA (IG-VLM's sheet): open-ended answers per scale; exact match, and the GPT judge with JUDGE_MODEL. Usage: msrvtt.sh [SCALES].
source "$(dirname "$0")/common.sh"
open_ended msrvtt "$SHEETS/open_ended_qa/MSRVTT_QA.csv" "${VIDEOS:-$VIDEO_DIR/msrvtt/videos/%s.mp4}"
