#!/usr/bin/env bash
# DeiT-Tiny with ToE on ImageNet: the paper's settings (4 GPUs x 256 = 1024 images per step, seed 3407,
# stages at epochs 0/100/200 keeping 50%/75%/100% of the patch tokens, 25% seeds, 2 sub-steps).
# Usage: DATA=/path/to/imagenet OUTPUT=runs/deit_tiny_toe [NGPUS=4] ToE/deit/run/imagenet_tiny_run1.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA OUTPUT
torchrun --nproc_per_node="${NGPUS:-4}" "$REPO_ROOT/ToE/deit/main.py" \
  --patch-size 16 --model deit_tiny_patch16_224 --batch-size 256 \
  --data-path "$DATA" --output_dir "$OUTPUT" --num_workers 8 --seed 3407 \
  --expansion-step 0 100 200 --keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25 \
  --expansion-multiple-stage 2 "$@"
