#!/usr/bin/env bash
# The demo (`make demo`): a small DeiT with ToE on the generated shapes dataset, on the CPU, in minutes.
# A compressed 3-stage schedule: epochs 0-2 keep 33 of 65 tokens, 3-5 keep 49, 6-8 use all 65.
# Variables: PYTHON (default python), DATA (default data/demo), OUTPUT (default output/demo),
# TOE (default 1; TOE=0 trains the same model with the same settings without ToE: the baseline),
# SEED (default 0).
# Running it again continues (or just reports) the run in OUTPUT; delete OUTPUT to start over.
# At the end it draws the training curves (toe plot) and ToE's token selection on a few validation
# images (toe visualize, with ToE) into OUTPUT, and prints the run's table (toe report).
set -euo pipefail
PYTHON=${PYTHON:-python}
DATA=${DATA:-data/demo}
OUTPUT=${OUTPUT:-output/demo}
TOE=${TOE:-1}
SEED=${SEED:-0}
case "$TOE" in
  1) TOE_FLAGS=(--toe --expansion-step 0 3 6 --keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25
       --expansion-multiple-stage 2) ;;
  0) TOE_FLAGS=() ;;
  *) echo "demo.sh: TOE must be 1 (with ToE) or 0 (the baseline), got '$TOE'" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../../.."

"$PYTHON" datasets/make_demo_data.py --out "$DATA"
"$PYTHON" ToE/deit/main.py \
  --data-path "$DATA" --output_dir "$OUTPUT" --auto-resume --device cpu --num_workers 0 --seed "$SEED" \
  --model deit_tiny_patch16_224 --input-size 32 --patch-size 4 --model-kwargs depth=6 \
  --epochs 9 --batch-size 64 --unscale-lr --lr 1e-3 --warmup-epochs 0 --drop-path 0.05 \
  --aa rand-m5-mstd0.5-inc1 --mixup 0 --cutmix 0 --reprob 0 --model-ema-decay 0.99 \
  "${TOE_FLAGS[@]}"
echo
"$PYTHON" -m toe.cli plot "$OUTPUT" --out "$OUTPUT/training_curves.png"
if [ "$TOE" = 1 ]; then
  "$PYTHON" -m toe.cli visualize --checkpoint "$OUTPUT/checkpoint.pth" --data-path "$DATA" --num-images 4 \
    --out "$OUTPUT/toe_selection.png"
fi
echo
"$PYTHON" -m toe.cli report "$OUTPUT"
