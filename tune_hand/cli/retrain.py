"""`tune-hand retrain`: the best trial retrained on training + validation, scored with rotation averaging."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import positive_int


def cmd_retrain(args) -> int:
    from ..evaluation import format_scores
    from ..retrain import retrain

    try:
        summary = retrain(args.source, args.data, args.out, epochs=args.epochs, tta=args.tta,
                          overrides=args.overrides)
    except KeyboardInterrupt:
        print(f"tune-hand: the same command resumes the retrain from {Path(args.out) / 'train'}", file=sys.stderr)
        raise
    metrics = json.loads(Path(summary["metrics"]).read_text())
    if metrics["scores_available"]:
        print(format_scores({**metrics["scores"], "tta": metrics["tta"], "baselines": metrics["baselines"]}),
              file=sys.stderr)
        if metrics["tta"] > 1:
            print(format_scores({**metrics["scores_no_tta"], "tta": 1}).splitlines()[1], file=sys.stderr)
    for key in ("note", "note_scores"):
        if key in metrics:
            print(f"{key}: {metrics[key]}", file=sys.stderr)
    print(f"retrained trial {summary['trial_id']} for {summary['epochs']} epochs -> {summary['out']} "
          f"(submission {summary['submission']})", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `retrain` to the `tune-hand` subparsers."""
    p = sub.add_parser("retrain", help="retrain the best trial on training + validation and score it with rotation "
                                       "averaging (metrics.json, submission.zip)")
    p.add_argument("source", metavar="EXPERIMENT_DIR_OR_EXPORT",
                   help="an experiment directory or bucket URI (its best trial is exported to OUT/best) or a directory "
                        "written by `tune-hand best --export`")
    p.add_argument("--data", required=True, help="dataset directory (FreiHAND layout)")
    p.add_argument("--out", required=True, help="where the run, checkpoint, metrics and submission go; "
                                                "rerunning with the same arguments resumes an interrupted retrain")
    p.add_argument("--epochs", type=positive_int, help="training budget (default: the trial's optim.epochs); "
                                                        "the LR milestones are rescaled to it")
    p.add_argument("--tta", type=positive_int, help="rotation-averaging angles (default: eval.tta_rotations)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value of the trial's config, e.g. --set train.device=cuda:1 (repeatable)")
    p.set_defaults(func=cmd_retrain)
