"""The private local Ray a sweep starts without --address: it ignores a stale cluster pointer,
keeps its token private, and nothing of it outlives a SIGKILLed driver."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import TINY

pytestmark = pytest.mark.slow


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.name()}")
        except psutil.Error:
            continue
    return out


def test_a_sigkilled_driver_leaves_no_ray_behind_and_a_stale_pointer_changes_nothing(tiny_data, tmp_path):
    # A short temp dir: Ray's socket paths under it must fit AF_UNIX's 107 characters.
    ray_tmp = Path(tempfile.mkdtemp(prefix="th", dir="/tmp"))
    home = tmp_path / "home"
    home.mkdir()
    try:
        # What a killed `ray start` leaves: a pointer to a cluster that is not there. A plain
        # ray.init() would try to attach to it and fail with a raw ValueError.
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("10.255.255.1:6379")
        exp = tmp_path / "st" / "k"
        args = [sys.executable, "-m", "tune_hand", "search", "quick", "--data", str(tiny_data),
                "--storage", str(tmp_path / "st"), "--name", "k", "--samples", "4"]
        for item in TINY + ["optim.epochs=6"]:
            args += ["--set", item]
        env = dict(os.environ, RAY_AUTH_MODE="token", RAY_TMPDIR=str(ray_tmp), HOME=str(home))
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and proc.poll() is None and not list(exp.glob("*/result.json")):
                time.sleep(0.3)
            assert proc.poll() is None, proc.communicate()[0][-3000:]  # trials run despite the stale pointer
            ray_procs = psutil.Process(proc.pid).children(recursive=True)
            names = {p.name() for p in ray_procs}
            assert {"raylet", "gcs_server"} <= names, names
            token = home / ".ray" / "auth_token"
            assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600

            os.kill(proc.pid, signal.SIGKILL)  # the driver alone, not its process group
            proc.wait(timeout=30)
            deadline = time.time() + 30
            while _alive(ray_procs) and time.time() < deadline:
                time.sleep(0.5)
            assert _alive(ray_procs) == []
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            for p in ray_procs if "ray_procs" in locals() else []:
                try:
                    p.kill()
                except psutil.Error:
                    pass
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
