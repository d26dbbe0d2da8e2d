#!/usr/bin/env bash
# EfficientTrain + ToE on the demo data (32 px shapes, see datasets/), on the CPU in a few minutes: a 6-block
# DeiT-Tiny with 4 px patches, 10 epochs in 5 stages at 16/16/16/24/32 px (4/4/4/6/6 -> 8 x 8 patches), 128
# images per update, ToE keeping 60%/80%/100% of the patches from epochs 0/3/7 (the paper's 0/100/200 of 300).
# Variables: PYTHON (default python), DATA (default data/demo), OUTPUT (default output/demo_et).
# Running it again continues (or just reports) the run in OUTPUT; delete OUTPUT to start over.
set -euo pipefail
PYTHON=${PYTHON:-python}
DATA=${DATA:-data/demo}
OUTPUT=${OUTPUT:-output/demo_et}
cd "$(dirname "$0")/../../.."

"$PYTHON" datasets/make_demo_data.py --out "$DATA"
"$PYTHON" ToE/EfficientTrain/ET_training.py \
  --data_path "$DATA" --output_dir "$OUTPUT" --device cpu --num_workers 0 --seed 0 \
  --model deit_tiny_patch16_224 --model-kwargs patch_size=4 depth=6 \
  --input_size 32 --input_sizes 16 16 16 24 32 --epochs 10 --final_bs 64 --effective_bs 128 \
  --lr 1e-3 --warmup_epochs 1 --drop_path 0.05 --mixup 0 --cutmix 0 --reprob 0 \
  --expansion-step 0 3 7 --keep-rate 0.6 0.8 1.0 --initialization-keep-rate 0.3 --expansion-multiple-stage 2
