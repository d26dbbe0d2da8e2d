#!/usr/bin/env bash
# DeiT-Base on ImageNet without ToE (the baseline of imagenet_base_run1.sh: same settings, no ToE flags).
# Usage: DATA=/path/to/imagenet OUTPUT=runs/deit_base_baseline [NGPUS=4] ToE/deit/run/imagenet_base_baseline.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA OUTPUT
torchrun --nproc_per_node="${NGPUS:-4}" "$REPO_ROOT/ToE/deit/main.py" \
  --patch-size 16 --model deit_base_patch16_224 --batch-size 256 \
  --data-path "$DATA" --output_dir "$OUTPUT" --num_workers 8 --seed 3407 "$@"
