#!/usr/bin/env bash
# DeiT-S with ToE on several machines (run this on every node). torchrun's c10d rendezvous needs the
# address of one node that all can reach; a worker that dies is restarted from the last checkpoint
# (--max-restarts with --auto-resume).
# Usage: DATA=... OUTPUT=... NNODES=2 MASTER_ADDR=node0 [MASTER_PORT=29500] [NGPUS=8] [JOB_ID=deit] $0 [flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require DATA OUTPUT NNODES MASTER_ADDR
torchrun --nnodes="$NNODES" --nproc_per_node="${NGPUS:-8}" --max-restarts=3 \
  --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id="${JOB_ID:-deit-toe}" \
  "$REPO_ROOT/ToE/deit/main.py" --auto-resume \
  --patch-size 16 --model deit_small_patch16_224 --batch-size $((1024 / NNODES / ${NGPUS:-8})) \
  --data-path "$DATA" --output_dir "$OUTPUT" --num_workers 8 --seed 3407 \
  --expansion-step 0 100 200 --keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25 \
  --expansion-multiple-stage 2 "$@"
