#!/usr/bin/env bash
# The YOLOS demo: a tiny YOLOS with ToE detects drawn shapes, on the CPU, in minutes.
# 1. Data: DATA, any COCO-layout folder; when not given, the generated shapes (data/demo_coco,
#    datasets/make_detection_demo_data.py: 400 train + 100 val images of 56-80 px, 5 categories).
# 2. Backbone: BACKBONE, a checkpoint of the demo's DeiT (deit_tiny_patch16_224 with 8 px patches, 4 blocks,
#    width 64); when not given, one is pre-trained on the classification demo data (data/demo, 32 px) into
#    OUTPUT/backbone (about 1 minute; reused when there).
# 3. YOLOS on that backbone: 10 [DET] tokens, position embedding at 64 x 64 px, DETR's augmentation at a
#    tenth of COCO's sizes (--aug-scale 0.1), evaluation at 64 px, ToE stages at epochs 0 / 5 / 10 keeping
#    50% / 75% / 100% of the patch tokens (TOE=0: the same run without ToE, the baseline).
# Variables: PYTHON (default python), DATA, OUTPUT (default output/yolos_demo), BACKBONE, TOE (default 1),
# SEED (default 0); arguments are passed on to ToE/YOLOS/main.py (e.g. --epochs 20).
# Running it again continues (or just reports) the run in OUTPUT/yolos; delete OUTPUT to start over.
# It ends with the run's table (toe report): stages, tokens, measured and analytic speedups, COCO AP.
set -euo pipefail
PYTHON=${PYTHON:-python}
OUTPUT=${OUTPUT:-output/yolos_demo}
TOE=${TOE:-1}
SEED=${SEED:-0}
case "$TOE" in
  1) TOE_FLAGS=(--toe --expansion-step 0 5 10 --keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25
       --expansion-multiple-stage 2) ;;
  0) TOE_FLAGS=() ;;
  *) echo "demo.sh: TOE must be 1 (with ToE) or 0 (the baseline), got '$TOE'" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../../.."
BACKBONE_SHAPE=(embed_dim=64 depth=4 num_heads=2)

if [ -z "${DATA:-}" ]; then
  DATA=data/demo_coco
  "$PYTHON" datasets/make_detection_demo_data.py --out "$DATA"
fi
if [ -z "${BACKBONE:-}" ]; then
  BACKBONE="$OUTPUT/backbone/checkpoint.pth"
  if [ ! -f "$BACKBONE" ]; then
    "$PYTHON" datasets/make_demo_data.py --out data/demo
    "$PYTHON" ToE/deit/main.py --data-path data/demo --output_dir "$OUTPUT/backbone" --auto-resume --device cpu \
      --num_workers 0 --seed "$SEED" --no-progress --model deit_tiny_patch16_224 --input-size 32 --patch-size 8 \
      --model-kwargs "${BACKBONE_SHAPE[@]}" --epochs 5 --batch-size 64 --unscale-lr --lr 2e-3 --warmup-epochs 0 \
      --drop-path 0 --aa rand-m5-mstd0.5-inc1 --mixup 0 --cutmix 0 --reprob 0 --no-model-ema
  fi
fi
"$PYTHON" ToE/YOLOS/main.py --coco_path "$DATA" --output_dir "$OUTPUT/yolos" --auto-resume --device cpu \
  --num_workers 0 --seed "$SEED" --no-progress --backbone_name tiny --pre_trained "$BACKBONE" \
  --model-kwargs img_size=32 patch_size=8 "${BACKBONE_SHAPE[@]}" --det_token_num 10 --init_pe_size 64 64 \
  --eval_size 64 --aug-scale 0.1 --batch_size 16 --lr 5e-4 --epochs 15 "${TOE_FLAGS[@]}" "$@"
echo
"$PYTHON" -m toe.cli report "$OUTPUT/yolos"
