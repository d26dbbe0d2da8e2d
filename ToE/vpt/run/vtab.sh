#!/usr/bin/env bash
# VPT on VTAB-1k in the paper's setting: ViT-B/16 pre-trained on ImageNet-21k (BACKBONE: timm's
# vit_base_patch16_224.orig_in21k weights file), 224 px, VPT-deep, batch 128, 100 epochs (10 warm-up), SGD.
# For every task of the 19 (one folder each under DATA, laid out as datasets/README.md says):
#   1. tune: for every base LR of VPT's grid (LRS) and weight decay (WDS), train on train800, evaluate val200;
#   2. final: with the LR and weight decay of the best final val200 top-1, train on train800val200 (the
#      1000-image train set) and evaluate on test, for each of SEEDS.
# Finished runs are skipped (the same command continues an interrupted sweep; --auto-resume continues a
# run); a task folder that is missing is skipped with a note. Results: OUTPUT/<task>/final_seed<S>/log.txt
# (test top-1 in test_acc1), OUTPUT/<task>/best.txt (the chosen LR and weight decay).
# Usage: DATA=/path/to/vtab-1k BACKBONE=vit_b16_in21k.safetensors OUTPUT=runs/vtab [NGPUS=1] [TOE=1]
#        [TASKS="cifar dtd ..."] [PROMPTS=50] [LRS="50 25 ..."] [WDS="0.01 ..."] [SEEDS="0 1 2 3 4"]
#        ToE/vpt/run/vtab.sh [extra flags for every run]
# TOE=1 trains every run with ToE (stages at epochs 0 33 66, keep rates 0.5 0.75 1.0); TOE=0 is plain VPT.
# The paper searches the prompt length per task too (1, 5, 10, 50, 100, 200): set PROMPTS per call.
set -euo pipefail
source "$(dirname "$0")/../../deit/run/common.sh"
require DATA BACKBONE OUTPUT
NGPUS=${NGPUS:-1}
TASKS=${TASKS:-"caltech101 cifar dtd oxford_flowers102 oxford_iiit_pet svhn sun397 patch_camelyon eurosat resisc45
  diabetic_retinopathy clevr_count clevr_distance dmlab kitti dsprites_location dsprites_orientation
  smallnorb_azimuth smallnorb_elevation"}
LRS=${LRS:-"50 25 10 5 2.5 1 0.5 0.25 0.1 0.05"}
WDS=${WDS:-"0.01 0.001 0.0001 0.0"}
SEEDS=${SEEDS:-"0 1 2 3 4"}
PROMPTS=${PROMPTS:-50}
case "${TOE:-1}" in
  1) TOE_FLAGS=(--toe --expansion-step 0 33 66 --keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25) ;;
  0) TOE_FLAGS=() ;;
  *) echo "vtab.sh: TOE must be 1 or 0, got '$TOE'" >&2; exit 2 ;;
esac

train() {  # train OUTPUT_DIR TRAIN_SPLIT VAL_SPLIT LR WD SEED [flags]: skipped when its 100 epochs are logged
  local out=$1 train_split=$2 val_split=$3 lr=$4 wd=$5 seed=$6
  shift 6
  if [ -f "$out/log.txt" ] && [ "$(wc -l < "$out/log.txt")" -ge 100 ]; then return; fi
  torchrun --nproc_per_node="$NGPUS" "$REPO_ROOT/ToE/vpt/main.py" --data-path "$task_dir" \
    --train-split "$train_split" --val-split "$val_split" --finetune "$BACKBONE" --output_dir "$out" --auto-resume \
    --model vit_base_patch16_224 --input-size 224 --vpt deep --prompt-tokens "$PROMPTS" --transform vtab \
    --batch-size $((128 / NGPUS)) --epochs 100 --warmup-epochs 10 --lr "$lr" --weight-decay "$wd" --seed "$seed" \
    --num_workers 8 --no-progress "${TOE_FLAGS[@]}" "$@"
}

final_top1() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["test_acc1"])' "$1"; }

for task in $TASKS; do
  task_dir="$DATA/$task"
  if [ ! -d "$task_dir" ]; then echo "vtab.sh: no folder $task_dir, task $task skipped" >&2; continue; fi
  best_top1=-1
  for lr in $LRS; do
    for wd in $WDS; do
      train "$OUTPUT/$task/tune_lr${lr}_wd${wd}" train800 val200 "$lr" "$wd" 42 "$@"
      top1=$(final_top1 "$OUTPUT/$task/tune_lr${lr}_wd${wd}/log.txt")
      if python3 -c "import sys; sys.exit(not float(sys.argv[1]) > float(sys.argv[2]))" "$top1" "$best_top1"; then
        best_top1=$top1 best_lr=$lr best_wd=$wd
      fi
    done
  done
  echo "lr $best_lr wd $best_wd (val200 top-1 $best_top1)" > "$OUTPUT/$task/best.txt"
  for seed in $SEEDS; do
    train "$OUTPUT/$task/final_seed$seed" train800val200 test "$best_lr" "$best_wd" "$seed" "$@"
    echo "$task seed $seed: test top-1 $(final_top1 "$OUTPUT/$task/final_seed$seed/log.txt")"
  done
done
