"""Remote sweeps: the sweep driver sent to a Ray cluster as a Ray Job, and the jobs it runs.

    tune-hand submit --address http://HEAD:8265 --storage /nfs/sweeps -- search paper --data /nfs/freihand
    tune-hand jobs                      # id, status, start time, command
    tune-hand logs JOB [--follow]
    tune-hand stop JOB
    tune-hand token new --out FILE      # a cluster token, written with mode 0600

The driver then runs on the head node (`python -m tune_hand search ... --address auto`), so the
laptop that submitted it can disconnect. By default the project's packages (tune_hand,
trainables, search_spaces) travel with the job as Ray `py_modules`, from wherever this
machine imports them; `--no-ship` uses what the cluster's image has installed. A spec given
as a local file travels too, in its self-contained form (base config inlined).

Every path in the forwarded command is a path on the cluster: `--data` and `--storage` must
be absolute (or a bucket URI), since a relative one would land in the job's scratch directory.

Token authentication (Ray 2.60, `RAY_AUTH_MODE=token` on the cluster): the dashboard refuses
any request without `Authorization: Bearer <token>` (401) or with a wrong one (403). The
token is read from `--token-file`, else `$RAY_AUTH_TOKEN`, else the file `$RAY_AUTH_TOKEN_PATH`,
else `~/.ray/auth_token` (Ray's own order), and always sent when found, whatever this
machine's RAY_AUTH_MODE (Ray's client sends it only when that is `token`).

Ray is imported only inside the functions that talk to a cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, TuneHandError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TOKEN_PATH = "~/.ray/auth_token"  # Ray's default token file
# Shipped with --working-dir DIR: never the environment, data, results or VCS history.
WORKING_DIR_EXCLUDES = [".venv", "venv", ".git", "data", "sweeps", "demo_out", "runs", "out", "build", "dist",
                        "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"]
PACKAGES = ("tune_hand", "trainables", "search_spaces")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_LOCAL_ONLY = ("submit", "jobs", "logs", "stop", "token")  # the commands that talk to a cluster themselves


def default_address() -> str:
    """--address's default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, else the local dashboard."""
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


# -- tokens ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    value: str | None
    source: str  # where it was read, for error messages; never the token itself


def find_token(token_file: str | Path | None = None) -> Token:
    """The cluster token, from --token-file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if token_file:
        return Token(_read_token(Path(token_file).expanduser(), "--token-file"), f"--token-file {token_file}")
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN")
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        return Token(_read_token(path, "$RAY_AUTH_TOKEN_PATH"), f"$RAY_AUTH_TOKEN_PATH ({path})")
    path = Path(TOKEN_PATH).expanduser()
    if path.is_file():
        return Token(_read_token(path, TOKEN_PATH), str(path))
    return Token(None, f"none was found (no --token-file, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or {TOKEN_PATH})")


def _read_token(path: Path, what: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise TuneHandError(f"{path}: cannot read the token file ({what}): {e.strerror}") from None
    if not token:
        raise TuneHandError(f"{path}: the token file ({what}) is empty")
    return token


def write_token(path: str | Path, overwrite: bool = False) -> Path:
    """Write a new random cluster token (256 bits, hex, as Ray's own) to `path` with mode 0600.

    The file is created 0600 under a temporary name in the same directory and renamed into
    place, so the token is never readable by others, not even for a moment, and a reader
    never sees a half-written file.
    """
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise TuneHandError(f"{path}: exists; pass --force to replace the cluster token "
                            "(every node and client must then get the new one)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask left
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


# -- the client -----------------------------------------------------------------------------------
class Jobs:
    """A Ray job client for one cluster; every failure is a one-line TuneHandError."""

    def __init__(self, address: str | None = None, token_file: str | Path | None = None):
        self.address = address or default_address()
        self.token = find_token(token_file)
        with self._errors():
            from ray.dashboard.modules.job.sdk import JobSubmissionClient

            for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                         "ray._private.runtime_env.packaging"):  # per-package upload and websocket chatter
                logging.getLogger(name).setLevel(logging.WARNING)
            headers = {"Authorization": f"Bearer {self.token.value}"} if self.token.value else None
            # Ray replaces an explicit address by $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS
            # (ray/dashboard/utils.py, get_address_for_submission_client); --address must win.
            with _env_without("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
                self.client = JobSubmissionClient(self.address, headers=headers)

    @contextlib.contextmanager
    def _errors(self, job_id: str | None = None) -> Iterator[None]:
        try:
            yield
        except TuneHandError:
            raise
        except _sdk_errors() as e:
            raise TuneHandError(self._explain(e, job_id)) from None

    def _explain(self, e: Exception, job_id: str | None) -> str:
        text = " ".join(str(e).split())
        status = getattr(e, "status", None)  # aiohttp's websocket handshake error (logs --follow)
        if text.startswith("Authentication required") or status == 401:
            return (f"{self.address}: the cluster requires an authentication token and {self.token.source}; "
                    f"pass --token-file, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
        if text.startswith("Authentication failed") or status == 403:
            return (f"{self.address}: the cluster rejected the token from {self.token.source} (403 Forbidden); "
                    "use the token the cluster was started with")
        if "require the ray[default]" in text:
            return "submitting to a cluster needs Ray's job client: pip install 'ray[default]'"
        if isinstance(e, OSError) or type(e).__name__ == "ClientConnectorError":
            return (f"cannot reach the Ray dashboard at {self.address} ({text[:200]}); is the head node up "
                    "and its dashboard port reachable (e.g. `ssh -L 8265:localhost:8265 HEAD`)?")
        if job_id and ("does not exist" in text or "404" in text):
            return f"{self.address}: no job {job_id!r} (see `tune-hand jobs`)"
        return f"{self.address}: {text[:300]}"

    # The verbs ---------------------------------------------------------------------------------
    def submit(self, entrypoint: str, runtime_env: dict[str, Any], submission_id: str,
               metadata: dict[str, str] | None = None) -> str:
        with self._errors():
            return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                          submission_id=submission_id, metadata=metadata or {})

    def list(self) -> list[dict[str, Any]]:
        """Every job, oldest first: id, status, start time (s), end time, entrypoint, message."""
        with self._errors():
            details = self.client.list_jobs()
        rows = [{"id": d.submission_id or d.job_id, "type": str(getattr(d.type, "value", d.type)),
                 "status": str(getattr(d.status, "value", d.status)),
                 "start_time": (d.start_time or 0) / 1000, "end_time": (d.end_time or 0) / 1000 or None,
                 "entrypoint": d.entrypoint or "", "message": d.message or "", "metadata": d.metadata or {}}
                for d in details]
        return sorted(rows, key=lambda r: r["start_time"])

    def status(self, job_id: str) -> str:
        with self._errors(job_id):
            return str(getattr(self.client.get_job_status(job_id), "value", ""))

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return self.client.get_job_logs(job_id)

    def follow(self, job_id: str, write=None) -> str:
        """Stream the job's output until it ends; returns its final status."""
        import asyncio

        write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        self.status(job_id)  # a clear error for an unknown job before the websocket opens

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk)

        with self._errors(job_id), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Ray's SDK passes aiohttp ssl=None
            asyncio.run(tail())
        return self.wait(job_id, timeout=30)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop (SIGTERM to its driver, SIGKILL a few seconds later); False if it had ended."""
        with self._errors(job_id):
            return self.client.stop_job(job_id)

    def wait(self, job_id: str, timeout: float) -> str:
        """Poll until the job is in a terminal state or `timeout` seconds passed; returns the status."""
        deadline = time.monotonic() + timeout
        status = self.status(job_id)
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self.status(job_id)
        return status


def _sdk_errors() -> tuple[type[BaseException], ...]:
    """What Ray's job SDK raises for a refused, failed or unreachable request (requests' errors
    are OSErrors; `logs --follow` speaks aiohttp)."""
    from ray.exceptions import AuthenticationError

    errors: list[type[BaseException]] = [AuthenticationError, RuntimeError, OSError, ValueError]
    with contextlib.suppress(ImportError):
        import aiohttp

        errors.append(aiohttp.ClientError)
    return tuple(errors)


@contextlib.contextmanager
def _env_without(*names: str) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# -- submitting a sweep -----------------------------------------------------------------------------
def submit_command(command: list[str], parser, address: str | None = None, token_file: str | Path | None = None,
                   storage: str | None = None, ship: bool = True, working_dir: str | Path | None = None,
                   log=None) -> dict[str, Any]:
    """Send `tune-hand COMMAND...` to the cluster as a Ray job: a sweep (search, resume), or any
    other command that should run there (retrain on a GPU node, `inspect` of the cluster's data).

    The command is checked here first (arguments, spec, overrides), so a typo fails on the
    laptop, not minutes later on the cluster, with `parser` (tune-hand's own, `cli.build_parser()`).
    Returns {job_id, address, entrypoint, experiment}
    (experiment: STORAGE/NAME of a search or resume, else None).
    """
    log = log or (lambda msg: print(f"tune-hand: {msg}", file=sys.stderr))
    command, experiment, name = prepare_command(command, parser, storage)
    runtime_env: dict[str, Any] = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    with tempfile.TemporaryDirectory(prefix="tune_hand_submit_") as staging:
        if ship:
            runtime_env["py_modules"] = [str(package_dir(p)) for p in PACKAGES]
            runtime_env["excludes"] = ["__pycache__", "*.pyc"]
        command = _ship_spec(command, ship, working_dir, Path(staging), runtime_env, log)
        if working_dir:
            runtime_env["excludes"] = sorted(set(runtime_env.get("excludes", [])) | set(WORKING_DIR_EXCLUDES))
        entrypoint = "python -m tune_hand " + shlex.join(command)
        jobs = Jobs(address, token_file)
        shipped = [Path(p).name for p in runtime_env.get("py_modules", [])]
        if "working_dir" in runtime_env:
            shipped.append(f"working dir {runtime_env['working_dir'] if working_dir else command[1]}")
        log(f"shipping {', '.join(shipped)}" if shipped else "shipping no code (--no-ship): the cluster's "
            "installed tune-hand runs the job")
        job_id = jobs.submit(entrypoint, runtime_env, submission_id=f"tune-hand-{name}-{secrets.token_hex(3)}",
                             metadata={"tune_hand": command[0], "experiment": experiment or ""})
    return {"job_id": job_id, "address": jobs.address, "entrypoint": entrypoint, "experiment": experiment}


def prepare_command(command: list[str], parser, storage: str | None = None) -> tuple[list[str], str | None, str]:
    """(the command to run on the cluster, its experiment path or None, a short name for the job id).

    Validates it with `parser`, tune-hand's own (`cli.build_parser()`); adds --address auto (a sweep driver joins the
    cluster it runs in), --storage, and for a search without --name a dated --name, so the
    experiment's path is known at submission.
    """
    command = list(command[1:] if command[:1] == ["--"] else command)
    if not command or command[0].startswith("-") or command[0] in _LOCAL_ONLY:
        raise ConfigError("submit: give the tune-hand command to run on the cluster after `--`, e.g. "
                          "`tune-hand submit --address http://HEAD:8265 --storage /nfs/sweeps -- search paper "
                          "--data /nfs/freihand`")
    args = parser.parse_args(command)
    options = _options(parser, command[0])
    if storage:
        if "--storage" not in options:
            raise ConfigError(f"submit --storage: `{command[0]}` takes no --storage; give the experiment "
                              "directory (STORAGE/NAME) instead")
        if args.storage and args.storage != storage:
            raise ConfigError(f"submit: --storage {storage} and the command's --storage {args.storage} differ")
        if not args.storage:
            command += ["--storage", storage]
    storage = getattr(args, "storage", None) or storage
    if "--address" in options and args.address is None:
        command += ["--address", "auto"]

    if command[0] == "search":
        from .sweep.parse import load_spec, with_overrides

        spec = load_spec(args.spec)
        with_overrides(spec, args.overrides, args.samples)  # a bad --set fails here, not on the cluster
        # The spec right after `search`, where _ship_spec looks for it (the options may come first).
        at = next(i for i, a in enumerate(command) if i and a == args.spec and not command[i - 1].startswith("-"))
        command = ["search", args.spec, *command[1:at], *command[at + 1:]]
        if not storage:
            raise ConfigError("submit: a submitted sweep needs --storage, a directory every node sees (NFS) "
                              "or a bucket URI; the default ./sweeps would be the job's scratch directory")
        _cluster_path("--storage", storage)
        _cluster_path("--data", args.data)
        name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not args.name:
            command += ["--name", name]
        experiment = f"{storage.rstrip('/')}/{name}"
    elif command[0] == "resume":
        _cluster_path("experiment", args.experiment)
        if args.data:
            _cluster_path("--data", args.data)
        experiment = args.experiment
        name = Path(experiment.rstrip("/")).name
    else:
        experiment, name = None, command[0]
    return command, experiment, _slug(name)


def _options(parser, command: str) -> set[str]:
    """The option strings that subcommand `command` accepts."""
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices[command]._option_string_actions)


def _cluster_path(what: str, path: str) -> None:
    if "://" not in path and not path.startswith("/"):
        raise ConfigError(f"{what} {path}: a submitted command runs on the cluster, so give an absolute path "
                          "there (or a bucket URI); a relative one would be inside the job's scratch directory")


def _ship_spec(command: list[str], ship: bool, working_dir, staging: Path, runtime_env: dict, log) -> list[str]:
    """Arrange for a spec given as a local file to be readable by the job; rewrite its argument."""
    if command[0] != "search" or not Path(command[1]).is_file():
        if working_dir:
            runtime_env["working_dir"] = str(Path(working_dir).resolve())
        return command
    spec_file = Path(command[1]).resolve()
    if not ship:
        log(f"--no-ship: the job reads the spec at {spec_file} on the head node")
        return [command[0], str(spec_file), *command[2:]]
    if working_dir:
        root = Path(working_dir).resolve()
        if not spec_file.is_relative_to(root):
            raise ConfigError(f"{command[1]}: with --working-dir {working_dir} the spec file must be inside it")
        runtime_env["working_dir"] = str(root)
        return [command[0], str(spec_file.relative_to(root)), *command[2:]]
    from .sweep.parse import load_spec

    spec = load_spec(spec_file)  # shipped self-contained: its base config inlined, no other file needed
    (staging / spec_file.name).write_text(spec.to_yaml())
    runtime_env["working_dir"] = str(staging)
    return [command[0], spec_file.name, *command[2:]]


def package_dir(name: str) -> Path:
    """Where this machine imports a top-level package from (editable checkout or site-packages)."""
    import importlib

    module = importlib.import_module(name)
    return Path(module.__file__).resolve().parent


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:60]


# -- output ---------------------------------------------------------------------------------------
def format_jobs(rows: list[dict[str, Any]], width: int = 70) -> str:
    if not rows:
        return "no jobs"
    lines = [f"{'id':<40} {'status':<10} {'started':<19}  command"]
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["start_time"])) if r["start_time"] else "-"
        command = r["entrypoint"].removeprefix("python -m tune_hand ")
        command = command if len(command) <= width else command[:width - 3] + "..."
        lines.append(f"{r['id']:<40} {r['status']:<10} {started:<19}  {command}")
    return "\n".join(lines)
