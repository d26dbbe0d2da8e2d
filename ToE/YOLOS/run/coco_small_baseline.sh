#!/usr/bin/env bash
# YOLOS-S on COCO without ToE: the same settings as coco_small_run1.sh (upstream YOLOS's YOLOS-S recipe).
# Usage: DATA=/path/to/coco PRETRAINED=deit_small_patch16_224.pth OUTPUT=runs/yolos_small [NGPUS=8] \
#   ToE/YOLOS/run/coco_small_baseline.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA PRETRAINED OUTPUT
torchrun --nproc_per_node="${NGPUS:-8}" "$REPO_ROOT/ToE/YOLOS/main.py" \
  --coco_path "$DATA" --batch_size 1 --lr 2.5e-5 --epochs 150 --backbone_name small \
  --pre_trained "$PRETRAINED" --eval_size 800 --init_pe_size 512 864 --mid_pe_size 512 864 \
  --output_dir "$OUTPUT" --num_workers 8 "$@"
