#!/usr/bin/env bash
# LV-ViT-S with token labeling and ToE on ImageNet: the paper's settings (4 GPUs x 256 = 1024 images per step, lr
# 1.6e-3, 300 + 10 cool-down epochs, stages at epochs 0/100/200 keeping 40%/70%/100% of the patch tokens, 20% seeds,
# 2 sub-steps). LABELS holds the token-label files (ToE/lvvit/run/generate_labels.sh makes them).
# Usage: DATA=/path/to/imagenet LABELS=/path/to/token_labels OUTPUT=runs/lvvit_small_toe [NGPUS=4] ToE/lvvit/run/imagenet_small_run1.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA LABELS OUTPUT
torchrun --nproc_per_node="${NGPUS:-4}" "$REPO_ROOT/ToE/lvvit/main.py" "$DATA" --output "$OUTPUT" \
  --model lvvit_s -b 256 --img-size 224 --drop-path 0.1 \
  --token-label --token-label-data "$LABELS" --token-label-size 14 --model-ema --apex-amp \
  --expansion-step 0 100 200 --keep-rate 0.4 0.7 1.0 --initialization-keep-rate 0.2 --expansion-multiple-stage 2 "$@"
