#!/bin/bash
# TGIF-FrameQA (IG-VLM's sheet): open-ended answers per scale; exact match, and the GPT judge with JUDGE_MODEL. Usage: tgif.sh [SCALES].
source "$(dirname "$0")/common.sh"
open_ended tgif "$SHEETS/open_ended_qa/TGIF_FrameQA.csv" "${VIDEOS:-$VIDEO_DIR/tgif/videos/%s.gif}"
