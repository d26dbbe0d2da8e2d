#!/usr/bin/env bash
# LV-ViT-M with token labeling and ToE on ImageNet: the settings of imagenet_small_run1.sh with lvvit_m and
# LV-ViT-M's drop-path 0.2 (lower -b and raise NGPUS to keep 1024 images per step if memory is short).
# Usage: DATA=/path/to/imagenet LABELS=/path/to/token_labels OUTPUT=runs/lvvit_medium_toe [NGPUS=4] ToE/lvvit/run/imagenet_medium_run1.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA LABELS OUTPUT
torchrun --nproc_per_node="${NGPUS:-4}" "$REPO_ROOT/ToE/lvvit/main.py" "$DATA" --output "$OUTPUT" \
  --model lvvit_m -b 256 --img-size 224 --drop-path 0.2 \
  --token-label --token-label-data "$LABELS" --token-label-size 14 --model-ema --apex-amp \
  --expansion-step 0 100 200 --keep-rate 0.4 0.7 1.0 --initialization-keep-rate 0.2 --expansion-multiple-stage 2 "$@"
