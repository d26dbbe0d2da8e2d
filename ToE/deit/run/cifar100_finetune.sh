#!/usr/bin/env bash
# Fine-tune an ImageNet DeiT checkpoint (e.g. one trained with ToE by imagenet_small_run1.sh) on CIFAR-100
# at 224 px, DeiT's transfer setting: SGD, lr 0.01, weight decay 1e-4, 768 images per step.
# The head is replaced (100 classes) and the position embedding kept (same 224 px grid).
# Usage: DATA=/path/to/cifar CHECKPOINT=runs/deit_small_toe/checkpoint.pth OUTPUT=runs/cifar100 \
#        [MODEL=deit_small_patch16_224] [NGPUS=4] [EPOCHS=1000] ToE/deit/run/cifar100_finetune.sh [extra flags, e.g. --download or --toe]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA CHECKPOINT OUTPUT
NGPUS=${NGPUS:-4}
torchrun --nproc_per_node="$NGPUS" "$REPO_ROOT/ToE/deit/main.py" \
  --data-set CIFAR100 --data-path "$DATA" --finetune "$CHECKPOINT" --output_dir "$OUTPUT" \
  --model "${MODEL:-deit_small_patch16_224}" --input-size 224 --batch-size $((768 / NGPUS)) \
  --opt sgd --lr 0.01 --unscale-lr --weight-decay 1e-4 --epochs "${EPOCHS:-1000}" --num_workers 8 --seed 3407 "$@"
