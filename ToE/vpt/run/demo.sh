#!/usr/bin/env bash
# The VPT demo: prompt-tune the DeiT demo's model (trained on the 10 demo shapes) on 10 shape classes it never
# saw (datasets/make_demo_data.py --task new-shapes: 100 training images per class, VTAB-1k's 1000 in all),
# with VPT-deep alone and with VPT-deep + ToE, on the CPU in a few minutes, and print both side by side:
# top-1, train compute time, and the training memory of a step (on the CPU: the activations saved for
# backward) per ToE stage. ToE's stages: epochs 0-2 keep 32 of 64 patch tokens, 3-5 keep 48, 6-8 all.
# Variables: PYTHON (default python), DATA (default data/demo-transfer), OUTPUT (default output/vpt_demo),
# BACKBONE (default output/demo/checkpoint.pth; the DeiT demo trains it first when it is missing), SEED (0).
# Running it again continues (or just reports) the runs in OUTPUT; delete OUTPUT to start over.
set -euo pipefail
PYTHON=${PYTHON:-python}
DATA=${DATA:-data/demo-transfer}
OUTPUT=${OUTPUT:-output/vpt_demo}
BACKBONE=${BACKBONE:-output/demo/checkpoint.pth}
SEED=${SEED:-0}
cd "$(dirname "$0")/../../.."

if [ ! -f "$BACKBONE" ]; then
  echo "no backbone at $BACKBONE: training the DeiT demo first"
  PYTHON="$PYTHON" OUTPUT="$(dirname "$BACKBONE")" ToE/deit/run/demo.sh
fi
"$PYTHON" datasets/make_demo_data.py --task new-shapes --out "$DATA" --train-per-class 100 --val-per-class 50 --seed 1
VPT=(--data-path "$DATA" --finetune "$BACKBONE" --auto-resume --device cpu --num_workers 0 --seed "$SEED"
     --model deit_tiny_patch16_224 --input-size 32 --model-kwargs patch_size=4 depth=6
     --vpt deep --prompt-tokens 8 --epochs 9 --warmup-epochs 1 --batch-size 64 --lr 0.1)
echo "== VPT-deep (the baseline)"
"$PYTHON" ToE/vpt/main.py "${VPT[@]}" --output_dir "$OUTPUT/vpt"
echo "== VPT-deep + ToE"
"$PYTHON" ToE/vpt/main.py "${VPT[@]}" --output_dir "$OUTPUT/vpt_toe" \
  --toe --expansion-step 0 3 6 --keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25
echo
"$PYTHON" -m toe.cli report "$OUTPUT/vpt_toe"
echo
"$PYTHON" -m toe.cli report --side-by-side "$OUTPUT/vpt" "$OUTPUT/vpt_toe"
