"""How fast the `small` preset learns the hand's articulation, and whether the demo's search pays.

    # 1. learning curves: PA-MPJPE on the evaluation split against training images seen, for
    #    wrist- vs centroid-relative targets, each with and without the PA loss, 2 seeds
    python benchmarks/bench_learning.py curves --data /tmp/learn/d3000 --images 60000 --every 6000 \
        --seeds 0 1 --json benchmarks/results/learning_curves.json
    # 2. search vs default: per data seed, `tune-hand demo` (its sweep's best config, retrained),
    #    against the small preset's default config retrained at the same budget on the same data
    python benchmarks/bench_learning.py search --out /tmp/learn/svd --seeds 0 1 2 \
        --json benchmarks/results/learning_search.json [--reuse-demo 0=/tmp/demo_out]

Part 1 renders nothing when --data exists (else `--poses` x 4 colour versions + `--eval` images,
seed 0). Every run trains on all training images (no validation split), with a constant LR
(milestones none), and is scored without rotation averaging on the evaluation split every
`--every` images, beside both constant baselines. Part 2 scores with 10-rotation averaging.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tune_hand.config import load_config  # noqa: E402
from tune_hand.data.dataset import HandPoseDataset, make_loader  # noqa: E402
from tune_hand.data.freihand import FreiHAND  # noqa: E402
from tune_hand.evaluation import baseline_scores  # noqa: E402
from tune_hand.metrics import pa_mpjpe_mm  # noqa: E402
from tune_hand.training import Trainer, predict_loader, train_step  # noqa: E402

VARIANTS = {  # name -> overrides of the small preset
    "wrist": ["model.target=root_relative", "optim.pa_loss_weight=0"],
    "wrist+pa": ["model.target=root_relative", "optim.pa_loss_weight=1"],
    "centroid": ["model.target=centroid_relative", "optim.pa_loss_weight=0"],
    "centroid+pa": ["model.target=centroid_relative", "optim.pa_loss_weight=1"],
}


def ensure_data(data: Path, poses: int, n_eval: int, seed: int = 0) -> Path:
    if not (data / "training_K.json").exists():
        from tune_hand.data.synthetic import render_dataset

        s = render_dataset(data, n_train=poses, n_eval=n_eval, seed=seed, with_mesh_files=False, workers=2)
        print(f"rendered {s['train_images']} + {s['eval_images']} images in {s['seconds']:.0f}s -> {data}", flush=True)
    return data


def eval_loader(data: Path, cfg) -> torch.utils.data.DataLoader:
    reader = FreiHAND(data, "evaluation")
    dataset = HandPoseDataset(reader, np.arange(len(reader)), cfg.data.image_size, augment=None)
    return make_loader(dataset, cfg.eval.batch_size, 0)


def curve(data: Path, variant: str, seed: int, images: int, every: int, extra: list[str], tta: int = 1,
          drop_at: int = 0) -> dict:
    """Train one variant for `images` images, scoring the evaluation split every `every` images; the LR
    is multiplied by optim.gamma once `drop_at` images are seen (0: never)."""
    cfg = load_config("small", VARIANTS[variant] + ["data.val_fraction=0", "optim.milestones=[]",
                                                   f"train.seed={seed}", "data.num_workers=0"] + extra)
    trainer = Trainer(cfg, data, train_on_val=True)
    loader = eval_loader(data, cfg)
    train_xyz_mm = FreiHAND(data, "training").xyz * 1000.0
    points, seen, next_eval, t0, epoch = [], 0, every, time.perf_counter(), 0
    train_seconds, dropped = 0.0, False
    while seen < images:
        trainer.model.train()
        trainer.sampler.set_epoch(epoch)
        epoch += 1
        t_train = time.perf_counter()
        for batch in trainer.train_loader:
            x, y = trainer.to_input(batch["image"]), trainer.targets(batch["xyz_mm"])
            loss = train_step(trainer.model, trainer.optimizer, trainer.scaler, x, y, None, cfg.optim.pa_loss_weight)
            seen += len(x)
            if drop_at and seen >= drop_at and not dropped:
                dropped = True
                for group in trainer.optimizer.param_groups:
                    group["lr"] *= cfg.optim.gamma
            if not math.isfinite(loss.item()):
                raise SystemExit(f"{variant} seed {seed}: diverged after {seen} images")
            if seen >= next_eval or seen >= images:
                train_seconds += time.perf_counter() - t_train
                pred, gt = predict_loader(trainer, loader)
                rr = float(np.linalg.norm((pred - pred[:, :1]) - (gt - gt[:, :1]), axis=-1).mean())
                point = {"images": seen, "pa_mpjpe_mm": round(pa_mpjpe_mm(pred, gt), 3), "rr_mpjpe_mm": round(rr, 2)}
                if tta > 1:
                    pred_tta, _ = predict_loader(trainer, loader, tta=tta)
                    point[f"pa_mpjpe_mm_tta{tta}"] = round(pa_mpjpe_mm(pred_tta, gt), 3)
                points.append({**point, "seconds": round(time.perf_counter() - t0, 1)})
                print(f"  {variant:<12} seed {seed}  {seen:>7} images  PA {point['pa_mpjpe_mm']:6.2f} mm  "
                      + (f"PA tta{tta} {point[f'pa_mpjpe_mm_tta{tta}']:6.2f} mm  " if tta > 1 else "")
                      + f"rr {rr:6.1f} mm  ({points[-1]['seconds']:.0f}s)", flush=True)
                next_eval += every
                trainer.model.train()
                t_train = time.perf_counter()
                if seen >= images:
                    break
        train_seconds += time.perf_counter() - t_train
    base = baseline_scores(train_xyz_mm, gt)
    return {"variant": variant, "seed": seed, "overrides": VARIANTS[variant] + extra, "lr_drop_at": drop_at,
            "points": points,
            "train_images_per_s": round(seen / max(train_seconds, 1e-9), 1),
            "baseline_mean_hand_camera_pa_mpjpe_mm": round(base["mean_hand_camera"]["pa_mpjpe_mm"], 3),
            "baseline_mean_hand_shape_pa_mpjpe_mm": round(base["mean_hand_shape"]["pa_mpjpe_mm"], 3)}


def run_curves(args) -> dict:
    data = ensure_data(Path(args.data), args.poses, args.eval)
    torch.set_num_threads(args.threads)
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            runs.append(curve(data, variant, seed, args.images, args.every, args.set, args.tta, args.drop_at))
            if args.json:  # partial results survive an interrupted benchmark
                _write(args.json, {"part": "curves", "data": str(data), "runs": runs})
    return {"part": "curves", "data": str(data), "torch_threads": args.threads, "runs": runs,
            "summary": _curve_summary(runs)}


def _curve_summary(runs: list[dict]) -> list[dict]:
    """Mean (and sd over seeds) PA-MPJPE per variant at each image count."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        for i, point in enumerate(mine[0]["points"]):
            values = [r["points"][i]["pa_mpjpe_mm"] for r in mine if len(r["points"]) > i]
            rows.append({"variant": variant, "images": point["images"], "pa_mpjpe_mm": round(statistics.mean(values), 2),
                         "sd": round(statistics.stdev(values), 2) if len(values) > 1 else None, "seeds": len(values)})
    return rows


# -- part 2 ------------------------------------------------------------------------------------
def run_search_vs_default(args) -> dict:
    from tune_hand.demo import run_demo
    from tune_hand.evaluation import evaluate_checkpoint
    from tune_hand.runs import run

    reuse = dict(item.split("=", 1) for item in args.reuse_demo)
    rows = []
    for seed in args.seeds:
        out = Path(reuse.get(str(seed), Path(args.out) / f"seed{seed}"))
        summary_file = out / "demo_summary.json"
        if summary_file.exists():
            summary = json.loads(summary_file.read_text())
        else:
            summary = run_demo(out, seed=seed)
        epochs = summary["retrain_epochs"]
        default_dir = Path(args.out) / f"seed{seed}_default"
        checkpoint = default_dir / "checkpoint.pt"
        if not checkpoint.exists():
            cfg = load_config("small", [f"optim.epochs={epochs}", "data.val_fraction=0"] + args.set)
            trainer = Trainer(cfg, out / "data", train_on_val=True)
            run(trainer, default_dir)
            del trainer
        scores = evaluate_checkpoint(checkpoint, out / "data", tta=10)
        plain = evaluate_checkpoint(checkpoint, out / "data", tta=1)
        rows.append({"data_seed": seed, "retrain_epochs": epochs, "retrain_train_images": summary["retrain_train_images"],
                     "searched_pa_mpjpe_mm": summary["pa_mpjpe_mm"], "searched_pa_mpjpe_mm_no_tta": summary["pa_mpjpe_mm_no_tta"],
                     "searched_params": summary["best_params"],
                     "default_pa_mpjpe_mm": round(scores["pa_mpjpe_mm"], 3),
                     "default_pa_mpjpe_mm_no_tta": round(plain["pa_mpjpe_mm"], 3),
                     "baseline_mean_hand_camera_pa_mpjpe_mm": summary["baseline_mean_hand_camera_pa_mpjpe_mm"],
                     "baseline_mean_hand_shape_pa_mpjpe_mm": summary["baseline_mean_hand_shape_pa_mpjpe_mm"]})
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            _write(args.json, {"part": "search_vs_default", "rows": rows})
    return {"part": "search_vs_default", "rows": rows, "summary": _mean_sd(rows)}


def _mean_sd(rows: list[dict]) -> dict:
    out = {}
    for key in ("searched_pa_mpjpe_mm", "default_pa_mpjpe_mm", "baseline_mean_hand_shape_pa_mpjpe_mm",
                "baseline_mean_hand_camera_pa_mpjpe_mm"):
        values = [r[key] for r in rows]
        out[key] = {"mean": round(statistics.mean(values), 2),
                    "sd": round(statistics.stdev(values), 2) if len(values) > 1 else None, "n": len(values)}
    return out


def _write(path: str, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    c = sub.add_parser("curves", help="learning curves: wrist vs centroid targets, with and without the PA loss")
    c.add_argument("--data", required=True, help="dataset dir (rendered when missing)")
    c.add_argument("--poses", type=int, default=3000)
    c.add_argument("--eval", type=int, default=200)
    c.add_argument("--images", type=int, default=90000, help="training images per run")
    c.add_argument("--every", type=int, default=6000, help="score every this many images")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    c.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--drop-at", type=int, default=0, help="multiply the LR by optim.gamma after this many images")
    c.add_argument("--tta", type=int, default=1, help="also score with this many rotations at every point")
    c.add_argument("--set", action="append", default=[], help="extra section.key=value overrides")
    c.add_argument("--json")
    s = sub.add_parser("search", help="the demo's searched config retrained vs the small preset's default")
    s.add_argument("--out", required=True)
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    s.add_argument("--reuse-demo", action="append", default=[], metavar="SEED=DIR",
                   help="a finished demo's output for that data seed")
    s.add_argument("--set", action="append", default=[], help="overrides for the default config")
    s.add_argument("--json")
    args = parser.parse_args()
    result = run_curves(args) if args.part == "curves" else run_search_vs_default(args)
    if args.json:
        _write(args.json, result)
    print(json.dumps(result.get("summary"), indent=1))


if __name__ == "__main__":
    main()
