"""One driver per experiment: a lock that `search`, `resume` and `fork` hold while they run.

    with DriverLock(exp):           # a second driver of `exp` fails at once, naming the holder
        ...                         # start or restore the Tuner

The lock is `EXP/driver.lock`, a small JSON file: {host, pid, pid_started, since, heartbeat,
token}. Ray never copies it: on a restore Ray downloads only the experiment's `*.json` and
`*.pkl` files into its staging directory and uploads that directory back at every snapshot,
so a lock named `*.json` would be overwritten there with its stale first copy.

- Local disk and NFS: the lock is written to a temporary file and hard-linked into place;
  link() is atomic and fails when the name exists, on local file systems and on NFS, so two
  drivers starting at the same moment cannot both win, and nobody reads a half-written lock. A thread rewrites `heartbeat` every `HEARTBEAT_S`.
- Buckets (s3://, gs://...): a lease object with the same heartbeat. Object stores reached
  through pyarrow have no create-if-absent, so two drivers started within the same second can
  both see no lease; the lease is re-read after writing, and the loser of such a race (the one
  whose token is not there) fails, but a write that lands after the re-read is not seen. Say
  plainly: on a bucket the lock catches a second driver started later, not a simultaneous one.

A stale lock is taken over with a warning: its holder is dead (same host, no such pid, or a
pid reused by another process), or its heartbeat is older than `STALE_S` (another host).
Readers (`status`, `best`, `report`) never take it. Written by hand: Python's fcntl/flock locks
do not survive NFS well and say nothing about buckets, and no maintained library covers both
with a readable holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import TuneHandError
from .storage import display, filesystem, is_remote, join, write_text

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # a heartbeat this old is a dead holder (10 missed beats)


class ExperimentBusy(TuneHandError):
    """Another live driver holds the experiment."""


class DriverLock:
    """Hold `EXP/driver.lock` for the life of a driver (a context manager)."""

    def __init__(self, exp: str, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.exp = exp
        self.path = join(exp, LOCK_FILE)
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made_dir = not is_remote(exp) and not Path(exp).exists()

    # -- holding ---------------------------------------------------------------------------
    def __enter__(self) -> "DriverLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def check_free(self) -> None:
        """Fail (ExperimentBusy) while a live driver holds the lock; take nothing."""
        holder = self._read()
        if holder is not None and self._stale(holder) is None:
            raise ExperimentBusy(f"{display(self.exp)}: another driver runs this experiment "
                                 f"({_describe(holder)}); wait for it, or stop it first")

    def acquire(self) -> None:
        for _ in range(3):  # a lost race against another taker re-reads the winner's lock
            holder = self._read()
            if holder is not None:
                why = self._stale(holder)
                if why is None:
                    raise ExperimentBusy(f"{display(self.exp)}: another driver runs this experiment "
                                         f"({_describe(holder)}); wait for it, or stop it first")
                print(f"tune-hand: warning: taking over the lock of {display(self.exp)} from "
                      f"{_describe(holder)}: {why}", file=sys.stderr)
                if not self._remove_if(holder):
                    continue
            if self._create():
                break
        else:
            holder = self._read() or {}
            raise ExperimentBusy(f"{display(self.exp)}: another driver took this experiment while this one "
                                 f"started ({_describe(holder)})")
        self._thread = threading.Thread(target=self._beat, name="tune-hand-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            self._delete()
        if self._made_dir:  # a driver that stopped before writing anything leaves nothing behind
            with contextlib.suppress(OSError):
                Path(self.exp).rmdir()

    def _record(self, since: float | None = None) -> dict[str, Any]:
        now = time.time()
        return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _process_start(os.getpid()),
                "since": since or now, "heartbeat": now, "token": self.token}

    def _beat(self) -> None:
        since = time.time()
        while not self._stop.wait(self.heartbeat_s):
            holder = self._read()
            if holder is None or holder.get("token") != self.token:
                print(f"tune-hand: warning: the lock of {display(self.exp)} was taken by "
                      f"{_describe(holder or {})}; two drivers may now run this experiment", file=sys.stderr)
                return
            since = holder.get("since", since)
            with contextlib.suppress(OSError, TuneHandError):
                self._write(self._record(since))

    # -- staleness -------------------------------------------------------------------------
    def _stale(self, holder: dict[str, Any]) -> str | None:
        """Why the holder is dead, or None while it may be alive."""
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            pid = holder["pid"]
            if not _pid_alive(pid):
                return f"no process {pid} on this host"
            started = _process_start(pid)
            if holder.get("pid_started") and started and abs(started - holder["pid_started"]) > 1:
                return f"process {pid} is another program now"
            return None
        beat = holder.get("heartbeat")
        if not isinstance(beat, (int, float)):
            return "the lock file is not one tune-hand wrote"
        age = time.time() - beat
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f} s"
        return None

    # -- the file or object ------------------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        try:
            if is_remote(self.path):
                import pyarrow.fs

                fs, p = filesystem(self.path)
                if fs.get_file_info(p).type != pyarrow.fs.FileType.File:
                    return None
                with fs.open_input_stream(p) as f:
                    text = f.read(65536).decode("utf-8", "replace")
            else:
                text = Path(self.path).read_text(errors="replace")[:65536]
        except FileNotFoundError:
            return None
        except OSError as e:
            raise TuneHandError(f"{display(self.path)}: cannot read the driver lock ({e.strerror or e})") from None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        return holder if isinstance(holder, dict) else {"unreadable": True}

    def _create(self) -> bool:
        """Create the lock if nobody holds it; False when another driver got there first."""
        record = self._record()
        if is_remote(self.path):
            write_text(self.path, json.dumps(record))
            time.sleep(0.2)
            holder = self._read() or {}
            return holder.get("token") == self.token
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Written whole first, then linked into place: link() is atomic and fails on an existing
        # name (on NFS too), so nobody ever reads a half-written lock.
        tmp = f"{self.path}.{self.token}.tmp"
        try:
            Path(tmp).write_text(json.dumps(record))
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError as e:
            raise TuneHandError(f"{display(self.path)}: cannot create the driver lock ({e.strerror or e})") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return True

    def _write(self, record: dict[str, Any]) -> None:
        if is_remote(self.path):
            write_text(self.path, json.dumps(record))
            return
        tmp = f"{self.path}.{self.token}.tmp"
        Path(tmp).write_text(json.dumps(record))
        os.replace(tmp, self.path)

    def _remove_if(self, stale: dict[str, Any]) -> bool:
        """Remove the lock only if it is still `stale` (not one another taker just made)."""
        if is_remote(self.path):
            if self._read() != stale:
                return False
            self._delete()
            return True
        aside = f"{self.path}.stale-{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # another taker removed it; race for the create
        moved = _read_json(aside)
        if moved is not None and moved.get("token") != stale.get("token"):
            with contextlib.suppress(OSError):  # we moved a live lock: put it back unless replaced
                os.link(aside, self.path)
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    def _delete(self) -> None:
        if is_remote(self.path):
            fs, p = filesystem(self.path)
            with contextlib.suppress(OSError):
                fs.delete_file(p)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def lock_holder(exp: str) -> dict[str, Any] | None:
    """Who holds `exp` now (None when nobody does), for messages."""
    return DriverLock(exp)._read()


def _describe(holder: dict[str, Any]) -> str:
    if holder.get("unreadable"):
        return "an unreadable lock file"
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {when}"


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied, or no psutil
        return None
