#!/usr/bin/env bash
# The YOLOS demo: a tiny YOLOS learns to detect drawn shapes on the CPU, with ToE and without it, in minutes.
# 1. Data: DATA, any COCO-layout folder; when not given, the generated shapes (data/demo_detection,
#    datasets/make_detection_demo_data.py: 800 train + 100 val images of 64 x 64 px, 1-2 objects of 24-40 px
#    each, 5 categories).
# 2. Backbone: BACKBONE, a checkpoint of the demo's DeiT (deit_tiny_patch16_224 with 8 px patches, 4 blocks,
#    width 64); when not given, one is pre-trained on the classification demo data (data/demo, 32 px) into
#    OUTPUT/backbone (about 30 s; reused when there).
# 3. YOLOS on that backbone, twice: with ToE (OUTPUT/yolos_toe; stages at the thirds of EPOCHS keeping 50% /
#    75% / 100% of the patch tokens) and without (OUTPUT/yolos, the baseline): 5 [DET] tokens, training and
#    evaluation at 64 px (--single-scale), the patch position embedding started as a 2-D sine-cosine one
#    (--pos_embed_init sincos: a classifier of shapes learns no positions), EPOCHS (default 40) epochs.
# It ends with the ToE run's table (toe report), both runs side by side (COCO AP50 and AP, train compute time,
# memory) and OUTPUT/predictions.png: the ToE model's boxes against the true ones on six validation images.
# Variables: PYTHON (default python), DATA, OUTPUT (default output/yolos_demo), BACKBONE, EPOCHS (default 40),
# SEED (default 0); arguments are passed on to both runs of ToE/YOLOS/main.py (e.g. --lr 5e-4).
# Running it again continues (or just reports) the runs; delete OUTPUT to start over.
set -euo pipefail
PYTHON=${PYTHON:-python}
OUTPUT=${OUTPUT:-output/yolos_demo}
EPOCHS=${EPOCHS:-40}
SEED=${SEED:-0}
if ! [[ "$EPOCHS" =~ ^[0-9]+$ ]] || [ "$EPOCHS" -lt 3 ]; then
  echo "demo.sh: EPOCHS must be a whole number of at least 3 (one per ToE stage), got '$EPOCHS'" >&2; exit 2
fi
cd "$(dirname "$0")/../../.."
BACKBONE_SHAPE=(embed_dim=64 depth=4 num_heads=2)

if [ -z "${DATA:-}" ]; then
  DATA=data/demo_detection
  "$PYTHON" datasets/make_detection_demo_data.py --out "$DATA" --image-size 64 --max-objects 2 --object-size 24 40 \
    --train-images 800 --val-images 100
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
YOLOS=(--coco_path "$DATA" --auto-resume --device cpu --num_workers 0 --seed "$SEED" --no-progress
       --backbone_name tiny --pre_trained "$BACKBONE" --model-kwargs img_size=32 patch_size=8 "${BACKBONE_SHAPE[@]}"
       --det_token_num 5 --init_pe_size 64 64 --pos_embed_init sincos --eval_size 64 --single-scale
       --batch_size 16 --lr 1e-3 --epochs "$EPOCHS")
echo "== YOLOS + ToE"
"$PYTHON" ToE/YOLOS/main.py "${YOLOS[@]}" --output_dir "$OUTPUT/yolos_toe" --toe \
  --expansion-step 0 $((EPOCHS / 3)) $((2 * EPOCHS / 3)) --keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25 \
  --expansion-multiple-stage 2 "$@"
echo "== YOLOS (the baseline, without ToE)"
"$PYTHON" ToE/YOLOS/main.py "${YOLOS[@]}" --output_dir "$OUTPUT/yolos" "$@"
"$PYTHON" ToE/YOLOS/main.py "${YOLOS[@]}" --eval --resume "$OUTPUT/yolos_toe/checkpoint.pth" \
  --predictions-figure "$OUTPUT/predictions.png" "$@" > /dev/null
echo
"$PYTHON" -m toe.cli report "$OUTPUT/yolos_toe"
echo
"$PYTHON" -m toe.cli report --side-by-side "$OUTPUT/yolos" "$OUTPUT/yolos_toe"
echo "predicted boxes (ToE model) on six validation images: $OUTPUT/predictions.png"
