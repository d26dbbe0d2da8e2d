#!/usr/bin/env bash
# DeiT-Tiny with EfficientTrain + ToE on ImageNet, the paper's settings: 300 epochs in 5 stages
# (160/160/160/192/224 px, RandAugment m1..m9), 8 GPUs x --final_bs 256 (512 below 224 px), 4096 images per
# update by accumulation, lr 4e-3, 20 warm-up epochs, AMP, clipping 5.0; ToE keeps 60%/80%/100% of the
# patch tokens from epochs 0/100/200 (30% seeds, 2 sub-steps). drop_path 0.1 is DeiT's value.
# Usage: DATA=/path/to/imagenet OUTPUT=runs/et_deit_tiny_toe [NGPUS=8] ToE/EfficientTrain/run/imagenet_tiny_run1.sh [extra flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA OUTPUT
NGPUS=${NGPUS:-8}
torchrun --nproc_per_node="$NGPUS" "$REPO_ROOT/ToE/EfficientTrain/ET_training.py" \
  --num_gpus "$NGPUS" --model deit_tiny_patch16_224 --final_bs 256 --epochs 300 \
  --data_path "$DATA" --output_dir "$OUTPUT" --num_workers 8 --drop_path 0.1 \
  --use_amp true --clip_grad 5.0 --expansion-step 0 100 200 --keep-rate 0.6 0.8 1.0 \
  --initialization-keep-rate 0.3 --expansion-multiple-stage 2 "$@"
