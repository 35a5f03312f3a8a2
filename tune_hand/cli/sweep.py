"""`tune-hand search`, `resume`, `trust`, `status`, `best` and `report`: a sweep from start to its best trial.

    tune-hand search quick --data data/ --name q1 --storage sweeps --set model.channels=8
    tune-hand resume sweeps/q1 [--budget-hours 2]
    tune-hand fork sweeps/q1 --name q2 --samples 12 [--epochs 8] [--spec other.yaml]
    tune-hand trust sweeps/old          # sign a sweep written before tune-hand signed its state
    tune-hand status sweeps/q1 [--json]
    tune-hand best sweeps/q1 --export best/
    tune-hand report sweeps/q1 --out report/ [--retrain final/]

Every EXPERIMENT may be a bucket URI as well (`tune-hand search ... --storage s3://bkt/sweeps`,
then `tune-hand status s3://bkt/sweeps/q1`); see `tune_hand.sweep.storage` for endpoints.
Each command is a thin shell over `tune_hand.sweep`; Ray is imported only by `search` and `resume`.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import positive_int


def cmd_search(args) -> int:
    from ..sweep import DEFAULT_STORAGE, run_search

    info = run_search(args.spec, args.data, storage=args.storage or DEFAULT_STORAGE, name=args.name,
                      address=args.address, samples=args.samples, overrides=args.overrides, key_file=args.key_file,
                      budget_hours=args.budget_hours)
    _print_summary(info)
    return _exit_code(info)


def cmd_resume(args) -> int:
    from ..sweep import resume_search

    info = resume_search(args.experiment, address=args.address, data_dir=args.data, key_file=args.key_file,
                         budget_hours=args.budget_hours)
    _print_summary(info)
    return _exit_code(info)


def cmd_fork(args) -> int:
    from ..sweep.fork import fork_search

    info = fork_search(args.experiment, args.name, spec=args.spec, samples=args.samples, epochs=args.epochs,
                       overrides=args.overrides, storage=args.storage, address=args.address, data_dir=args.data,
                       key_file=args.key_file, budget_hours=args.budget_hours)
    _print_summary(info)
    return _exit_code(info)


def cmd_trust(args) -> int:
    from ..sweep.experiment import exp_path
    from ..sweep.signing import trust_experiment

    signed = trust_experiment(exp_path(args.experiment), key_file=args.key_file)
    print(json.dumps({"experiment": args.experiment, "signed": signed}))
    return 0


def cmd_status(args) -> int:
    from ..sweep import load_status

    status = load_status(args.experiment)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        from ..sweep.results import format_status

        print(format_status(status))
    return 0


def cmd_best(args) -> int:
    from ..sweep import export_best

    out = export_best(args.experiment, args.export, overwrite=args.overwrite)
    print(f"best trial {out['trial_id']}: {out['metric']}={out['value']:.3f} at epoch {out['epoch']} "
          f"(spec {out['spec_name']}, hash {out['spec_hash']}) -> {out['out']}", file=sys.stderr)
    print(json.dumps(out))
    return 0


def cmd_report(args) -> int:
    from ..report import build_report

    out = build_report(args.experiment, args.out, retrain_dir=args.retrain, data_dir=args.data,
                       images=args.images, overwrite=args.overwrite)
    for name, why in out["missing"].items():
        print(f"tune-hand: {name}: {why}", file=sys.stderr)
    print(f"report: {out['html']} ({len(out['figures'])} figures)", file=sys.stderr)
    print(json.dumps(out))
    return 0


def _exit_code(info) -> int:
    """0 unless every trial ended without a usable result: 3 when all diverged (as `train`), 1
    when some errored. A sweep cut short (trials still pending or running) is not a failure."""
    if info.best is not None or not info.trials or set(info.states) - {"diverged", "error"}:
        return 0
    if set(info.states) == {"diverged"}:
        print(f"tune-hand: every trial diverged (NaN/inf loss or predictions); no config to export from "
              f"{info.path}: narrow the search space (a lower learning rate range)", file=sys.stderr)
        return 3
    print(f"tune-hand: no trial produced a result ({_states_text(info)}); "
          f"`tune-hand status {info.path}` shows each trial, the trials' error.txt say why", file=sys.stderr)
    return 1


def _states_text(info) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(info.states.items()))


def _print_summary(info) -> None:
    states = _states_text(info)
    best = info.best
    line = f"sweep {info.name}: {info.trials} trials ({states}) in {info.seconds:.0f}s -> {info.path}"
    if best:
        line += f"; best {best['trial_id']} {best['best_metric']:.3f} at epoch {best['best_epoch']}"
    print(line, file=sys.stderr)
    print(json.dumps(info.to_dict()))


def _experiment_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment directory or bucket URI (STORAGE/NAME)")


def _key_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", metavar="FILE",
                   help="the key that signs the sweep's state, mode 0600 (default: $TUNE_HAND_KEY_FILE, else "
                        "~/.config/tune-hand/key, made on first use); a resume needs the key the sweep was signed with")


def _budget_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-hours", type=float, metavar="H",
                   help="stop the sweep after H resource-hours (GPU-hours when trials hold GPUs, else CPU-hours): "
                        "no new trial starts, running ones end at their next epoch; `resume --budget-hours` raises it")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add search, resume, trust, status, best and report to the `tune-hand` subparsers."""
    p = sub.add_parser("search", help="run a hyperparameter sweep (Ray Tune + Optuna TPE + ASHA)")
    p.add_argument("spec", help="sweep spec YAML or a shipped spec (paper, quick)")
    p.add_argument("--data", required=True, help="dataset directory (FreiHAND layout), readable on every node")
    p.add_argument("--name", help="experiment name (default: SPEC-date-time)")
    p.add_argument("--storage", help="where experiments live: a directory, NFS path or bucket URI such as "
                                     "s3://bucket/sweeps (default: ./sweeps)")
    p.add_argument("--address", help="a running Ray cluster (`auto`: the one this machine belongs to; default: a new "
                                     "private Ray on this machine, stopped at the end)")
    p.add_argument("--samples", type=positive_int, help="override the spec's num_samples")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="pin a trial config value for every trial, e.g. --set model.channels=64 (repeatable; "
                        "a searched key stops being searched)")
    _key_file_arg(p)
    _budget_arg(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="continue an interrupted sweep from its experiment directory")
    _experiment_arg(p)
    p.add_argument("--address", help="a running Ray cluster (`auto`: the one this machine belongs to; default: a new "
                                     "private Ray on this machine)")
    p.add_argument("--data", help="dataset directory, if it moved since the search started")
    _key_file_arg(p)
    _budget_arg(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("fork", help="a new experiment from an old one: warm-started study, unchanged finished trials "
                                    "carried, --epochs continues finished trials from their checkpoints")
    _experiment_arg(p)
    p.add_argument("--name", required=True, help="the new experiment's name (one path segment)")
    p.add_argument("--spec", help="a new spec (default: the old experiment's own)")
    p.add_argument("--samples", type=positive_int, help="num_samples of the new experiment (carried trials count)")
    p.add_argument("--epochs", type=positive_int, help="a larger epoch budget: finished trials go on to it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="pin a trial config value (a changed fixed value carries nothing)")
    p.add_argument("--storage", help="where the new experiment lives (default: beside the old one)")
    p.add_argument("--address", help="a running Ray cluster (default: a new private Ray on this machine)")
    p.add_argument("--data", help="dataset directory (default: the old experiment's; other data carries nothing)")
    _key_file_arg(p)
    _budget_arg(p)
    p.set_defaults(func=cmd_fork)

    p = sub.add_parser("trust", help="sign a sweep's state files as they are now (a sweep written before tune-hand "
                                     "signed them); only for a sweep you wrote")
    _experiment_arg(p)
    _key_file_arg(p)
    p.set_defaults(func=cmd_trust)

    p = sub.add_parser("status", help="trials of a sweep and the best so far, from its storage (no Ray needed)")
    _experiment_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON: {trials: [...], best: {...}}")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("best", help="export the best trial's best-epoch checkpoint and config")
    _experiment_arg(p)
    p.add_argument("--export", required=True, metavar="DIR",
                   help="write config.yaml, checkpoint.pt, metrics.json, provenance.json here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("report", help="an HTML page + PNGs of a sweep (history, importances, ASHA, predictions), "
                                      "from its storage (no Ray needed)")
    _experiment_arg(p)
    p.add_argument("--out", required=True, metavar="DIR", help="write index.html and the PNGs here")
    p.add_argument("--retrain", metavar="DIR", help="a `tune-hand retrain` output: adds the rotation-averaging gain")
    p.add_argument("--data", help="dataset for the prediction grid (default: the sweep's)")
    p.add_argument("--images", type=positive_int, default=12, help="evaluation images in the prediction grid")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.set_defaults(func=cmd_report)
