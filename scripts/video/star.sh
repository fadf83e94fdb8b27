#!/bin/bash
# STAR (IG-VLM's sheet, four options, IG-VLM's STAR prompts): multiple-choice accuracy per scale. Usage: star.sh [SCALES].
source "$(dirname "$0")/common.sh"
multiple_choice star "$SHEETS/multiple_choice_qa/STAR.csv" "${VIDEOS:-$VIDEO_DIR/star/videos/%s.mp4}"
