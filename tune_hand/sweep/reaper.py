"""A watchdog that leaves nothing of a local Ray behind when the sweep driver dies.

    with Reaper():          # started by the driver right after it starts its private Ray
        ...                 # the sweep
    # on leaving: ray.shutdown() already ran; the reaper checks, then exits

A local `ray.init()` starts GCS, raylet, the dashboard and runtime-env agents and the workers as
descendants of the driver. `ray.shutdown()` stops them, but a driver that is SIGKILLed (the OOM
killer, `kill -9`, a scheduler's hard limit) never runs it, and some of them (the agents,
which rename themselves `ray::DashboardAgent`, `ray::RuntimeEnvAgent`) outlive it.

Ray has no option for this, and PR_SET_PDEATHSIG reaches only direct children, so this is a
small process of our own, in its own session (a kill of the driver's process group leaves
it running): it reads a pipe from the driver and, every second, records the driver's
descendants. When the pipe closes, the driver has exited or died: it gives what is still
alive of the recorded processes (and of their descendants) `grace` seconds to end, then
SIGTERM, then SIGKILL. Processes are matched by pid AND start time, so a reused pid is never
killed. Linux and macOS (psutil); it imports neither Ray nor torch, so it starts in ~0.1 s.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

POLL_S = 1.0


class Reaper:
    """Start the watchdog for this process; `close()` (or leaving the `with`) ends it."""

    def __init__(self, grace_s: float = 2.0):
        self.grace_s = grace_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Reaper:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tune_hand.sweep.reaper", str(os.getpid()), str(self.grace_s)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
        return self

    def close(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        self.proc.stdin.close()  # the same EOF a dying driver gives it
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc = None

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


# -- the watchdog process ----------------------------------------------------------------------
def _descendants(procs: dict) -> dict:
    """{(pid, start time): process} of `procs` still alive and all their current descendants."""
    import psutil

    out = {}
    for proc in list(procs.values()):
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            out[(proc.pid, proc.create_time())] = proc
            for child in proc.children(recursive=True):
                out[(child.pid, child.create_time())] = child
        except psutil.Error:
            continue
    return out


def watch(driver_pid: int, grace_s: float) -> None:
    import psutil

    me = os.getpid()
    known: dict = {}
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # EOF: the driver closed the pipe or died
        try:
            for child in driver.children(recursive=True):
                if child.pid != me:
                    known[(child.pid, child.create_time())] = child
        except psutil.Error:
            break  # the driver is gone
    deadline = time.monotonic() + grace_s
    alive = _descendants(known)
    while alive and time.monotonic() < deadline:  # a normal ray.shutdown() has already stopped them
        time.sleep(0.2)
        alive = _descendants(alive)
    for sig_kill in (False, True):
        for proc in _descendants(alive).values():
            if proc.pid == me:
                continue
            try:
                proc.kill() if sig_kill else proc.terminate()
            except psutil.Error:
                pass
        if not sig_kill:
            _, alive_list = psutil.wait_procs(list(_descendants(alive).values()), timeout=5)
            alive = {(p.pid, p.create_time()): p for p in alive_list if p.is_running()}


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 2.0)
