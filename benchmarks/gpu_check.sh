#!/usr/bin/env bash
# The GPU measurements behind the README's figures, as one script for a lent GPU machine
# (efficientnet-pytorch and tensorboardX carried in .devpkgs/ when the image lacks them).
# Usage: OUT=results_dir bash benchmarks/gpu_check.sh
set -uo pipefail
export PYTHONPATH="$PWD/.devpkgs:$PWD" PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
timeout 240 python3 benchmarks/bench_train_step.py --config paper --batch-size 32 --steps 20 --warmup 5 --compile \
    --json "$OUT/gpu_train_step_paper.json"
timeout 90 python3 benchmarks/bench_tta.py --config paper --batch-size 32 --n 10 --repeats 5 \
    --json "$OUT/gpu_tta_paper.json"
# End to end, with the input pipeline: synthetic data, then the paper config from random init.
timeout 90 python3 -c "from tune_hand.data.synthetic import render_dataset as r; \
print(r('/tmp/gd', n_train=800, n_eval=0, seed=0, with_mesh_files=False, workers=14))"
timeout 200 python3 -m tune_hand train --data /tmp/gd --out /tmp/gr --config paper \
    --set model.pretrained=false --set optim.epochs=3 --set data.num_workers=12 --set data.val_fraction=0.05 \
    2>&1 | tee "$OUT/gpu_train_paper.log"
