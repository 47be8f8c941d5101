#!/bin/bash
# Fine-tuned vs from-scratch on held-out systems (docs/zoo-model.md).
#   benchmarks/zoo_finetune.sh SRC_RUN FT_STEPS SCRATCH_STEPS OUT SYSTEM...
# Expects in the current directory train_SYSTEM.h5 (the user's file; e.g. `sciformer simulate
# rossler --out train_rossler.h5 --n-traj 8 --n-steps 1500 --seed 0`), SYSTEM.h5 (the scored
# file, seed 1) and cfg/scratch.yaml (the source run's model and data sections: its
# architecture, token format and anchor, e.g. the workflow's for data/pretrained/dynamics-zoo).
# Both runs are scored with
# benchmarks/zoo_zero_shot.py (context-only baselines).
SRC=$1; FT=$2; SC=$3; OUT=$4; shift 4
PY="python"
mkdir -p "$OUT"
COMMON="--set train.batch_size=64 --set train.log_every=50 --set train.threads=1 --set data.samples=16"
for s in "$@"; do
  [ -e "$OUT/ft_$s/model.safetensors" ] || $PY -m sciformer.cli pretrain "train_$s.h5" \
    --out-dir "$OUT/ft_$s" --init-from "$SRC" $COMMON --set train.max_steps="$FT" \
    --set train.lr=0.0005 --set train.warmup_steps=20 --set train.eval_every="$FT" \
    --set train.checkpoint_every="$FT"
  [ -e "$OUT/sc_$s/model.safetensors" ] || $PY -m sciformer.cli pretrain "train_$s.h5" \
    --out-dir "$OUT/sc_$s" --config cfg/scratch.yaml $COMMON --set train.max_steps="$SC" \
    --set train.eval_every="$SC" --set train.checkpoint_every="$SC"
  for kind in ft sc; do
    $PY "$(dirname "$0")/zoo_zero_shot.py" "$OUT/${kind}_$s" "$s.h5" --out "$OUT/eval_${kind}_$s"
  done
done
