"""`tune-hand model-info`, `train`, `evaluate`, `score` and `demo`: one model, one run, its scores."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_config_args, print_json_or


def cmd_model_info(args) -> int:
    from ..config import load_config
    from ..model.info import format_info, model_info

    cfg = load_config(args.config, args.overrides)
    info = model_info(cfg, image_size=args.image_size)
    print_json_or(args, info, format_info(info))
    return 0


def cmd_train(args) -> int:
    from ..config import load_config
    from ..model import describe_model
    from ..runs import print_epoch, run, start_run

    cfg = load_config(args.config, args.overrides)
    trainer = start_run(cfg, args.data, args.out, resume=args.resume, overrides=args.overrides)
    total = trainer.cfg.optim.epochs
    print(f"training {describe_model(trainer.cfg.model)} "
          f"on {len(trainer.train_idx)} images ({len(trainer.val_idx)} validation) on {trainer.device}, "
          f"epochs {trainer.epoch + 1}..{total} -> {args.out}", file=sys.stderr)
    last = run(trainer, args.out, on_epoch=lambda r: print_epoch(r, total))
    if last is None:
        print(f"nothing to do: the run in {args.out} already finished {trainer.epoch} epochs", file=sys.stderr)
        return 0
    summary = {"out": str(args.out), "status": last.status, "epochs": last.epoch,
               "best_metric": trainer.best_metric, "best_epoch": trainer.best_epoch, **last.val}
    print(json.dumps(summary))
    return 0 if last.status == "ok" else 3


def cmd_evaluate(args) -> int:
    from ..evaluation import evaluate_checkpoint, format_scores
    from ..io import write_json

    result = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, tta=args.tta,
                                 device=args.device, batch_size=args.batch_size, submission=args.submission)
    if args.json:
        write_json(args.json, result)
    print(format_scores(result) if "pa_mpjpe_mm" in result else json.dumps(result, indent=2))
    for key in ("note", "note_scores", "submission"):
        if key in result:
            print(f"{key}: {result[key]}")
    return 0


def cmd_score(args) -> int:
    from ..evaluation import format_scores, score_file
    from ..io import write_json

    result = score_file(args.prediction, args.data, split=args.split, data_seed=args.data_seed,
                        val_fraction=args.val_fraction)
    if args.json:
        write_json(args.json, result)
    print(format_scores(result))
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model-info", help="parameters and multiply-adds of a model config")
    add_config_args(p)
    p.add_argument("--image-size", type=int, default=224, help="input size for the MAC count (default 224)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("train", help="train one config (the loop a trial runs)")
    p.add_argument("--data", help="dataset directory (FreiHAND layout); default: data.dir")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics, TensorBoard")
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a checkpoint, with rotation averaging")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or a directory holding checkpoint.pt")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="evaluation", choices=["evaluation", "val"])
    p.add_argument("--tta", type=int, help="rotation-averaging angles (default: the checkpoint's eval.tta_rotations)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", metavar="FILE", help="write the metrics JSON here")
    p.add_argument("--submission", metavar="FILE.zip", help="write FreiHAND's pred.json, zipped")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="score a FreiHAND pred.json/pred.zip against the ground truth")
    p.add_argument("prediction")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="evaluation", choices=["evaluation", "val"])
    p.add_argument("--data-seed", type=int, default=0, help="with --split val: the run's data.seed")
    p.add_argument("--val-fraction", type=float, default=0.1, help="with --split val: the run's data.val_fraction")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("demo", help="the whole pipeline on synthetic data, sized for a laptop CPU")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--quick", action="store_true", help="a much smaller run (seconds), for smoke tests")
    p.set_defaults(func=cmd_demo)
