#!/usr/bin/env bash
# YOLOS-Ti with ToE on COCO: the reference settings (8 GPUs x 2 images, lr 5e-5, 300 epochs, evaluation at
# 512 px, position embedding at 800 x 1333; ToE stages at epochs 5/100/200 keeping 50%/75%/100% of the
# patch tokens, 25% seeds, 2 sub-steps).
# Usage: DATA=/path/to/coco PRETRAINED=deit_tiny_patch16_224.pth OUTPUT=runs/yolos_tiny_toe [NGPUS=8] \
#   ToE/YOLOS/run/coco_tiny_run1.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA PRETRAINED OUTPUT
torchrun --nproc_per_node="${NGPUS:-8}" "$REPO_ROOT/ToE/YOLOS/main.py" \
  --coco_path "$DATA" --batch_size 2 --lr 5e-5 --epochs 300 --backbone_name tiny \
  --pre_trained "$PRETRAINED" --eval_size 512 --init_pe_size 800 1333 --output_dir "$OUTPUT" \
  --expansion-step 5 100 200 --keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25 \
  --expansion-multiple-stage 2 "$@"
