"""The `tune-hand` command. Each subcommand is a thin shell over a library function.

User errors (TuneHandError) print one line, `tune-hand: error: ...`, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import TuneHandError

EXIT_USER_ERROR = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config YAML or a shipped preset (paper, small); default: the paper's config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set model.channels=64 (repeatable)")


def _print_json_or(args, info: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2))
    else:
        print(text)


# -- data ------------------------------------------------------------------------------
def cmd_synth(args) -> int:
    from .data.synthetic import render_dataset, write_preview

    out = Path(args.out)
    # `synth OUT --preview FILE.png` on an existing dataset only draws the preview.
    preview_only = args.preview and args.train is None and (out / "training_K.json").exists()
    if not preview_only:
        def progress(done: int, total: int) -> None:
            if sys.stderr.isatty():
                print(f"\rrendering {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

        summary = render_dataset(out, n_train=64 if args.train is None else args.train, n_eval=16 if args.eval is None else args.eval,
                                 seed=args.seed, image_size=args.image_size, with_mesh_files=not args.no_mesh,
                                 overwrite=args.overwrite, progress=progress)
        print(f"wrote {summary['dir']}: {summary['train_images']} training images "
              f"({summary['train_images'] // 4} poses x 4 colour versions), {summary['eval_images']} evaluation images "
              f"in {summary['seconds']:.1f}s ({summary['images_per_s']:.0f} images/s)")
    if args.preview:
        print(f"preview: {write_preview(out, args.preview, count=args.preview_count)}")
    return 0


def cmd_inspect(args) -> int:
    from .data.inspect import format_report, inspect_dataset

    info = inspect_dataset(args.data)
    _print_json_or(args, info, format_report(info))
    return 0


# -- model -----------------------------------------------------------------------------
def cmd_model_info(args) -> int:
    from .config import load_config
    from .model.info import format_info, model_info

    cfg = load_config(args.config, args.overrides)
    info = model_info(cfg, image_size=args.image_size)
    _print_json_or(args, info, format_info(info))
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .runs import print_epoch, run, start_run

    cfg = load_config(args.config, args.overrides)
    trainer = start_run(cfg, args.data, args.out, resume=args.resume, overrides=args.overrides)
    total = trainer.cfg.optim.epochs
    print(f"training {trainer.cfg.model.encoder} C={trainer.cfg.model.channels} N={trainer.cfg.model.blocks} "
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
    from .evaluation import evaluate_checkpoint, format_scores
    from .io import write_json

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
    from .evaluation import format_scores, score_file
    from .io import write_json

    result = score_file(args.prediction, args.data, split=args.split, data_seed=args.data_seed,
                        val_fraction=args.val_fraction)
    if args.json:
        write_json(args.json, result)
    print(format_scores(result))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


# -- remote sweeps: Ray jobs on a cluster -----------------------------------------------
def cmd_submit(args) -> int:
    from .jobs import submit_command

    out = submit_command(args.command, address=args.address, token_file=args.token_file, storage=args.storage,
                         ship=args.ship, working_dir=args.working_dir)
    where = f" --address {out['address']}" if args.address else ""
    lines = [f"submitted job {out['job_id']} to {out['address']}: {out['entrypoint']}"]
    if out["experiment"]:
        lines.append(f"  experiment: {out['experiment']}")
    lines += [f"  follow:     tune-hand logs {out['job_id']} --follow{where}",
              f"  list:       tune-hand jobs{where}",
              f"  stop:       tune-hand stop {out['job_id']}{where}"]
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps(out))
    return 0


def cmd_jobs(args) -> int:
    from .jobs import Jobs, format_jobs

    rows = Jobs(args.address, args.token_file).list()
    print(json.dumps(rows, indent=2) if args.json else format_jobs(rows))
    return 0


def cmd_logs(args) -> int:
    from .jobs import Jobs

    jobs = Jobs(args.address, args.token_file)
    if not args.follow:
        print(jobs.logs(args.job), end="")
        return 0
    status = jobs.follow(args.job)
    print(f"tune-hand: job {args.job}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def cmd_stop(args) -> int:
    from .jobs import Jobs

    jobs = Jobs(args.address, args.token_file)
    if not jobs.stop(args.job):
        print(f"tune-hand: job {args.job} had already ended: {jobs.status(args.job)}", file=sys.stderr)
        return 0
    status = jobs.wait(args.job, timeout=args.wait)
    print(f"tune-hand: job {args.job}: {status}" + ("" if status in ("STOPPED", "FAILED", "SUCCEEDED")
                                                    else f" (stop requested; not ended after {args.wait:g}s)"),
          file=sys.stderr)
    return 0


def cmd_token_new(args) -> int:
    from .jobs import write_token

    path = write_token(args.out, overwrite=args.force)
    print(f"wrote a new cluster token to {path} (mode 0600). Start every node with RAY_AUTH_MODE=token "
          f"RAY_AUTH_TOKEN_PATH={path}; clients: --token-file {path}", file=sys.stderr)
    return 0


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 "
                                     "(default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--token-file", help="the cluster's authentication token (default: $RAY_AUTH_TOKEN, "
                                        "$RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token)")


# -- the parser ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tune-hand", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="render a synthetic dataset in the FreiHAND layout")
    p.add_argument("out", help="output directory (must not exist or be empty)")
    p.add_argument("--train", type=int, help="unique training samples (4 colour versions each; default 64)")
    p.add_argument("--eval", type=int, help="evaluation images (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--no-mesh", action="store_true", help="skip the large mano/verts JSON files")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--preview", metavar="FILE.png", help="write a contact sheet of samples with keypoints drawn")
    p.add_argument("--preview-count", type=int, default=16)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="summarise a FreiHAND-layout directory and check it")
    p.add_argument("data")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("model-info", help="parameters and multiply-adds of a model config")
    _add_config_args(p)
    p.add_argument("--image-size", type=int, default=224, help="input size for the MAC count (default 224)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("train", help="train one config (the loop a trial runs)")
    p.add_argument("--data", help="dataset directory (FreiHAND layout); default: data.dir")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics, TensorBoard")
    _add_config_args(p)
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

    from .sweep_cli import add_commands
    add_commands(sub)

    p = sub.add_parser("submit", help="run a command (search, resume, retrain...) on a Ray cluster as a Ray job "
                                            "(the laptop may disconnect)",
                       usage="tune-hand submit [--address URL] [--storage DIR|URI] [--token-file F] "
                             "[--no-ship | --working-dir DIR] -- COMMAND ARGS... (e.g. search SPEC --data DIR)")
    _add_cluster_args(p)
    p.add_argument("--storage", help="experiments directory shared by every node (NFS) or a bucket URI; "
                                     "passed to the command")
    ship = p.add_mutually_exclusive_group()
    ship.add_argument("--no-ship", dest="ship", action="store_false",
                      help="send no code: the cluster's image has tune-hand installed")
    ship.add_argument("--working-dir", metavar="DIR",
                      help="also ship DIR as the job's working directory (without .venv, .git, data, sweeps...)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the tune-hand command to run there, after --")
    p.set_defaults(func=cmd_submit, ship=True)

    p = sub.add_parser("jobs", help="the cluster's jobs: id, status, start time, command")
    _add_cluster_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("logs", help="a job's output")
    p.add_argument("job", help="job id (from submit or `tune-hand jobs`)")
    _add_cluster_args(p)
    p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends; exit 0 if it succeeded")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a job (its sweep resumes later with `tune-hand submit -- resume EXP`)")
    p.add_argument("job")
    _add_cluster_args(p)
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS", help="wait this long for it to end")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("token", help="cluster authentication tokens")
    token_sub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = token_sub.add_parser("new", help="write a new random token to a file with mode 0600")
    t.add_argument("--out", required=True, metavar="FILE")
    t.add_argument("--force", action="store_true", help="replace an existing FILE")
    t.set_defaults(func=cmd_token_new)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        code = args.func(args)
    except TuneHandError as e:
        print(f"tune-hand: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("tune-hand: interrupted", file=sys.stderr)
        return 130
    if os.environ.get("TUNE_HAND_TIMING"):
        print(f"[{args.command}: {time.perf_counter() - start:.1f}s]", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
