#!/usr/bin/env bash
# How far the `small` config gets on the synthetic task with GPU-sized budgets: render 3,000
# poses, train time-boxed, then score the evaluation split with and without rotation averaging.
# Usage on a GPU host: OUT=results_dir bash benchmarks/gpu_learning.sh
set -uo pipefail
export PYTHONPATH="$PWD/.devpkgs:$PWD" PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
python3 -c "from tune_hand.data.synthetic import render_dataset as r; \
print(r('/tmp/gl', n_train=3000, n_eval=300, seed=0, with_mesh_files=False, workers=14))"
timeout ${TRAIN_SECONDS:-300} python3 -m tune_hand train --data /tmp/gl --out /tmp/glr --config small \
    --set optim.epochs=24 --set optim.milestones=[18,22] --set optim.batch_size=64 \
    --set data.num_workers=12 --set data.val_fraction=0.05 2>&1 | tee "$OUT/gpu_learning_train.log"
for n in 1 10; do
  python3 -m tune_hand evaluate --checkpoint /tmp/glr/best.pt --data /tmp/gl --tta $n \
      --json "$OUT/gpu_learning_eval_tta$n.json" 2>&1 | tee -a "$OUT/gpu_learning_eval.log"
done
