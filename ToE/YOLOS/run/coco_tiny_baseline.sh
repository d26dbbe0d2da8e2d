#!/usr/bin/env bash
# YOLOS-Ti on COCO without ToE: the same settings as coco_tiny_run1.sh (upstream YOLOS's YOLOS-Ti recipe).
# Usage: DATA=/path/to/coco PRETRAINED=deit_tiny_patch16_224.pth OUTPUT=runs/yolos_tiny [NGPUS=8] \
#   ToE/YOLOS/run/coco_tiny_baseline.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA PRETRAINED OUTPUT
torchrun --nproc_per_node="${NGPUS:-8}" "$REPO_ROOT/ToE/YOLOS/main.py" \
  --coco_path "$DATA" --batch_size 2 --lr 5e-5 --epochs 300 --backbone_name tiny \
  --pre_trained "$PRETRAINED" --eval_size 512 --init_pe_size 800 1333 --output_dir "$OUTPUT" "$@"
