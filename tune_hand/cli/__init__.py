"""The `tune-hand` command: one module per command group, the parser assembled here.

    data.py      synth, inspect
    train.py     model-info, train, evaluate, score, demo
    sweep.py     search, resume, trust, status, best, report
    retrain.py   retrain
    cluster.py   submit, jobs, logs, stop, token

Each subcommand is a thin shell over a library function. User errors (TuneHandError) print
one line, `tune-hand: error: ...`, and exit 2. The group modules import nothing from here:
a command that needs the whole parser (submit validates the command it sends) gets it as
`args.parser`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback

from ..errors import TuneHandError
from . import cluster, data, retrain, sweep, train
from .common import EXIT_USER_ERROR

GROUPS = (data, train, sweep, retrain, cluster)  # in the order `tune-hand --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tune-hand", description="hyperparameter search (Ray Tune, Optuna, ASHA) for 3D hand pose estimation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub)
    parser.set_defaults(parser=parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr (the traceback with TUNE_HAND_DEBUG=1):
    a user error (TuneHandError, a path that cannot be written) exits 2, anything else 1."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    debug = os.environ.get("TUNE_HAND_DEBUG", "") not in ("", "0")
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler, not at interpreter exit
    except KeyboardInterrupt:
        print("tune-hand: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `tune-hand status EXP | head -1`: the reader has gone; say nothing more, as `cat` would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes one line
        if debug:
            traceback.print_exc()
        print(f"tune-hand: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR if is_user_error(e) else 1
    if os.environ.get("TUNE_HAND_TIMING"):
        print(f"[{args.command}: {time.perf_counter() - start:.1f}s]", file=sys.stderr)
    return code


def is_user_error(e: BaseException) -> bool:
    """Bad input the user can fix: ours, or a file or directory that cannot be read or written."""
    return isinstance(e, (TuneHandError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                          PermissionError, UnicodeDecodeError))


def one_line(e: BaseException, limit: int = 300) -> str:
    """The error as one line of at most `limit` characters (ours: 800, they carry what to do),
    naming the file where Python knows it."""
    if isinstance(e, TuneHandError):
        text, limit = str(e), max(limit, 800)
    elif isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"
    elif isinstance(e, UnicodeDecodeError):
        text = f"not UTF-8 text ({e.reason} at byte {e.start})"
    else:
        text = f"{type(e).__name__}: {e} (a bug? rerun with TUNE_HAND_DEBUG=1 for the traceback)"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
