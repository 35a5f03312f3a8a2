"""`tune-hand submit`, `jobs`, `logs`, `stop`, `token new`: sweeps and other commands on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_submit(args) -> int:
    from ..jobs import submit_command

    out = submit_command(args.command, args.parser, address=args.address, token_file=args.token_file,
                         storage=args.storage, ship=args.ship, working_dir=args.working_dir)
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
    from ..jobs import Jobs, format_jobs

    rows = Jobs(args.address, args.token_file).list()
    print(json.dumps(rows, indent=2) if args.json else format_jobs(rows))
    return 0


def cmd_logs(args) -> int:
    from ..jobs import Jobs

    jobs = Jobs(args.address, args.token_file)
    if not args.follow:
        print(jobs.logs(args.job), end="")
        return 0
    status = jobs.follow(args.job)
    print(f"tune-hand: job {args.job}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def cmd_stop(args) -> int:
    from ..jobs import Jobs

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
    from ..jobs import write_token

    path = write_token(args.out, overwrite=args.force)
    print(f"wrote a new cluster token to {path} (mode 0600). Start every node with RAY_AUTH_MODE=token "
          f"RAY_AUTH_TOKEN_PATH={path}; clients: --token-file {path}", file=sys.stderr)
    return 0


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 "
                                     "(default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--token-file", help="the cluster's authentication token (default: $RAY_AUTH_TOKEN, "
                                        "$RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="run a command (search, resume, retrain...) on a Ray cluster as a Ray job "
                                            "(the laptop may disconnect)",
                       usage="tune-hand submit [--address URL] [--storage DIR|URI] [--token-file F] "
                             "[--no-ship | --working-dir DIR] -- COMMAND ARGS... (e.g. search SPEC --data DIR)")
    add_cluster_args(p)
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
    add_cluster_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("logs", help="a job's output")
    p.add_argument("job", help="job id (from submit or `tune-hand jobs`)")
    add_cluster_args(p)
    p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends; exit 0 if it succeeded")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a job (its sweep resumes later with `tune-hand submit -- resume EXP`)")
    p.add_argument("job")
    add_cluster_args(p)
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS", help="wait this long for it to end")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("token", help="cluster authentication tokens")
    token_sub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = token_sub.add_parser("new", help="write a new random token to a file with mode 0600")
    t.add_argument("--out", required=True, metavar="FILE")
    t.add_argument("--force", action="store_true", help="replace an existing FILE")
    t.set_defaults(func=cmd_token_new)
