#!/usr/bin/env bash
# The LV-ViT demo, on the CPU: the DeiT demo's model labels the generated shapes dataset (8x8 top-5 maps per image),
# then a 6-block LV-ViT-T trains on those token labels with MixToken and ToE (the paper's LV-ViT keep rates
# 40%/70%/100% and 20% seeds, stages compressed to epochs 0/3/6). The DeiT was trained on its class token only,
# so its per-patch labels are noisy: the class target comes from the ground truth (--ground-truth).
# Variables: PYTHON (default python), DATA (data/demo), LABELS (data/demo_labels), TEACHER (output/demo, the DeiT
# demo's run folder; trained first when it holds no checkpoint), OUTPUT (output/demo_lvvit).
# Running it again continues (or just reports) the run in OUTPUT; delete OUTPUT to start over.
set -euo pipefail
PYTHON=${PYTHON:-python}
DATA=${DATA:-data/demo}
LABELS=${LABELS:-data/demo_labels}
TEACHER=${TEACHER:-output/demo}
OUTPUT=${OUTPUT:-output/demo_lvvit}
cd "$(dirname "$0")/../../.."

"$PYTHON" datasets/make_demo_data.py --out "$DATA"
if [ ! -f "$TEACHER/checkpoint.pth" ]; then
  echo "no annotator in $TEACHER: training the DeiT demo first"
  PYTHON="$PYTHON" DATA="$DATA" OUTPUT="$TEACHER" ToE/deit/run/demo.sh
fi
"$PYTHON" ToE/lvvit/generate_label.py "$DATA" "$LABELS" --checkpoint "$TEACHER/checkpoint.pth" \
  --crop-pct 1.0 --device cpu -j 0 --no-progress
"$PYTHON" ToE/lvvit/main.py "$DATA" --output "$OUTPUT" --auto-resume --device cpu -j 0 --seed 0 \
  --model lvvit_t --img-size 32 --model-kwargs patch_size=4 depth=6 \
  --epochs 9 --cooldown-epochs 0 -b 64 --lr 1e-3 --warmup-epochs 0 --drop-path 0.05 \
  --aa rand-m5-mstd0.5-inc1 --reprob 0 --model-ema --model-ema-decay 0.99 \
  --token-label --token-label-data "$LABELS" --ground-truth \
  --toe --expansion-step 0 3 6 --keep-rate 0.4 0.7 1.0 --initialization-keep-rate 0.2 --expansion-multiple-stage 2
echo
"$PYTHON" -m toe.cli report "$OUTPUT"
