#!/usr/bin/env bash
# YOLOS-S with ToE on COCO: the reference settings (8 GPUs x 1 image, lr 2.5e-5, 150 epochs, evaluation at
# 800 px, position and mid position embeddings at 512 x 864; ToE stages at epochs 5/50/100 keeping
# 50%/75%/100% of the patch tokens, 25% seeds, 2 sub-steps).
# Usage: DATA=/path/to/coco PRETRAINED=deit_small_patch16_224.pth OUTPUT=runs/yolos_small_toe [NGPUS=8] \
#   ToE/YOLOS/run/coco_small_run1.sh [extra main.py flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA PRETRAINED OUTPUT
torchrun --nproc_per_node="${NGPUS:-8}" "$REPO_ROOT/ToE/YOLOS/main.py" \
  --coco_path "$DATA" --batch_size 1 --lr 2.5e-5 --epochs 150 --backbone_name small \
  --pre_trained "$PRETRAINED" --eval_size 800 --init_pe_size 512 864 --mid_pe_size 512 864 \
  --output_dir "$OUTPUT" --num_workers 8 \
  --expansion-step 5 50 100 --keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25 \
  --expansion-multiple-stage 2 "$@"
