#!/bin/bash
# EgoSchema (IG-VLM's 500-question subset with answers): multiple-choice accuracy per scale. Usage: egoschema.sh [SCALES].
source "$(dirname "$0")/common.sh"
multiple_choice egoschema "$SHEETS/multiple_choice_qa/EgoSchema.csv" "${VIDEOS:-$VIDEO_DIR/egoschema/videos/%s.mp4}"
