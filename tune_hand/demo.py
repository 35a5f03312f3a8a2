"""`tune-hand demo`: the whole pipeline on synthetic data, sized for a 2-core laptop.

Renders a synthetic FreiHAND-layout dataset, trains the CPU-sized config (preset
`small`) with rotation augmentation, then scores the evaluation split without and with
10-rotation averaging beside both constant baselines. Everything lands under OUT.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .config import load_config
from .evaluation import evaluate_checkpoint, format_scores
from .io import write_json
from .runs import BEST, print_epoch, run, start_run

# (unique training samples, evaluation images, epochs): the full demo fits ~10 minutes
# on 2 cores; --quick is a smoke test of the same path.
FULL = dict(train=2000, eval=200, epochs=7, milestones=[6, 7])
QUICK = dict(train=24, eval=16, epochs=2, milestones=[1, 2])


def run_demo(out: Path, quick: bool = False) -> dict:
    from .data.synthetic import render_dataset

    size = QUICK if quick else FULL
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "training_K.json").exists():
        summary = render_dataset(data, n_train=size["train"], n_eval=size["eval"], seed=0,
                                 with_mesh_files=False, workers=min(2, os.cpu_count() or 1))
        _say(f"data: {summary['train_images']} training + {summary['eval_images']} evaluation images "
             f"rendered in {summary['seconds']:.0f}s -> {data}")
    else:
        _say(f"data: reusing {data}")
    cfg = load_config("small", [f"optim.epochs={size['epochs']}", f"optim.milestones={size['milestones']}",
                                "data.num_workers=1"])
    run_dir = out / "train"
    resume = (run_dir / "checkpoint.pt").exists()
    trainer = start_run(cfg, data, run_dir, resume=resume)
    _say(f"train: {cfg.model.encoder} (width/depth x0.5) C={cfg.model.channels} N={cfg.model.blocks} "
         f"{cfg.data.image_size}px, {cfg.model.target} targets, {len(trainer.train_idx)} images, "
         f"{cfg.optim.epochs} epochs")
    run(trainer, run_dir, on_epoch=lambda r: print_epoch(r, cfg.optim.epochs))
    results = {}
    for tta in (1, 10):
        res = evaluate_checkpoint(run_dir / BEST, data, split="evaluation", tta=tta,
                                  submission=out / f"pred_tta{tta}.zip")
        write_json(out / f"metrics_tta{tta}.json", res)
        results[tta] = res
    _say("\nevaluation split (synthetic), mm:")
    _say(format_scores(results[1]))
    _say(format_scores({**results[10], "baselines": {}}).splitlines()[1])
    elapsed = time.perf_counter() - t0
    summary = {
        "seconds": round(elapsed, 1),
        "pa_mpjpe_mm": results[1]["pa_mpjpe_mm"], "pa_mpjpe_mm_tta10": results[10]["pa_mpjpe_mm"],
        "rr_mpjpe_mm": results[1]["rr_mpjpe_mm"], "rr_mpjpe_mm_tta10": results[10]["rr_mpjpe_mm"],
        "baseline_mean_hand_camera_pa_mm": results[1]["baselines"]["mean_hand_camera"]["pa_mpjpe_mm"],
        "baseline_mean_hand_shape_pa_mm": results[1]["baselines"]["mean_hand_shape"]["pa_mpjpe_mm"],
    }
    write_json(out / "demo_summary.json", summary)
    _say(f"\ndone in {elapsed:.0f}s: checkpoint {run_dir / BEST}, submission {out / 'pred_tta10.zip'}, "
         f"summary {out / 'demo_summary.json'}")
    return summary


def _say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
