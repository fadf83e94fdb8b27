#!/bin/bash
# TVQA (IG-VLM's sheet; its ts column picks each question's seconds of the clip): multiple-choice accuracy per
# scale. Usage: tvqa.sh [SCALES]; see common.sh.
source "$(dirname "$0")/common.sh"
multiple_choice tvqa "$SHEETS/multiple_choice_qa/TVQA.csv" "${VIDEOS:-$VIDEO_DIR/tvqa/videos/%s.mp4}"
