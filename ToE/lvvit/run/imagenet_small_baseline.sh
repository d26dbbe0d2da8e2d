#!/usr/bin/env bash
# LV-ViT-S with token labeling on ImageNet without ToE (the baseline of imagenet_small_run1.sh).
# Usage: DATA=/path/to/imagenet LABELS=/path/to/token_labels OUTPUT=runs/lvvit_small_base [NGPUS=4] ToE/lvvit/run/imagenet_small_baseline.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA LABELS OUTPUT
torchrun --nproc_per_node="${NGPUS:-4}" "$REPO_ROOT/ToE/lvvit/main.py" "$DATA" --output "$OUTPUT" \
  --model lvvit_s -b 256 --img-size 224 --drop-path 0.1 \
  --token-label --token-label-data "$LABELS" --token-label-size 14 --model-ema --apex-amp "$@"
