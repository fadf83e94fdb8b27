#!/bin/bash
# IntentQA (IG-VLM's sheet): multiple-choice accuracy per scale. Usage: intentqa.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"
multiple_choice intentqa "$SHEETS/multiple_choice_qa/IntentQA.csv" "${VIDEOS:-$VIDEO_DIR/intentqa/videos/%s.mp4}"
