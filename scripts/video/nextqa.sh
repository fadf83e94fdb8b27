#!/bin/bash
# NExT-QA (IG-VLM's sheet, 4,996 questions): multiple-choice accuracy per scale. Usage: nextqa.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"
multiple_choice nextqa "$SHEETS/multiple_choice_qa/NExT_QA.csv" "${VIDEOS:-$VIDEO_DIR/nextqa/videos/%s.mp4}"
