#!/usr/bin/env bash
# LV-ViT-M with token labeling on ImageNet without ToE (the baseline of imagenet_medium_run1.sh).
# Usage: DATA=/path/to/imagenet LABELS=/path/to/token_labels OUTPUT=runs/lvvit_medium_base [NGPUS=4] ToE/lvvit/run/imagenet_medium_baseline.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA LABELS OUTPUT
torchrun --nproc_per_node="${NGPUS:-4}" "$REPO_ROOT/ToE/lvvit/main.py" "$DATA" --output "$OUTPUT" \
  --model lvvit_m -b 256 --img-size 224 --drop-path 0.2 \
  --token-label --token-label-data "$LABELS" --token-label-size 14 --model-ema --apex-amp "$@"
