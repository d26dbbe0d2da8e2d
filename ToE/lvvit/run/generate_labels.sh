#!/usr/bin/env bash
# Token labels for ImageNet as LV-ViT made them: NFNet-F6 (timm dm_nfnet_f6, ImageNet weights) sees the central square
# of every training image at 576 px (--crop-pct 1.0, TokenLabeling's README) and gives 18x18 maps of top-5 scores
# (LABELS/<class>/<image>.pt). Hours on one GPU; run it
# again after an interruption and it continues where it stopped.
# Usage: DATA=/path/to/imagenet LABELS=/path/to/token_labels [MODEL=dm_nfnet_f6] [IMG_SIZE=576] [CHECKPOINT=weights.pth]
#        [PYTHON=python] ToE/lvvit/run/generate_labels.sh [extra generate_label.py flags]
# Without CHECKPOINT, timm downloads MODEL's pretrained weights.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA LABELS
if [ -n "${CHECKPOINT:-}" ]; then weights=(--checkpoint "$CHECKPOINT"); else weights=(--pretrained); fi
"${PYTHON:-python}" "$REPO_ROOT/ToE/lvvit/generate_label.py" "$DATA" "$LABELS" \
  --model "${MODEL:-dm_nfnet_f6}" --img-size "${IMG_SIZE:-576}" --crop-pct 1.0 "${weights[@]}" --amp -b 64 -j 8 "$@"
