"""The local Ray a sweep starts without --address listens on loopback only (issue #17)."""

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import TINY

# Ray itself starts nothing that cannot be kept on loopback (tune_hand/sweep/loopback.py): no exceptions.
KNOWN_EXCEPTIONS: set[str] = set()


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    # Ray's gRPC servers bind "::ffff:127.0.0.1" (IPv4-mapped loopback on an IPv6 socket), which
    # Python's is_loopback does not count before 3.13.
    return addr.is_loopback or (addr.version == 6 and addr.ipv4_mapped is not None and addr.ipv4_mapped.is_loopback)


def _name(proc: psutil.Process) -> str:
    """Ray's processes by name (`raylet`, `ray::DashboardAgent`), Python scripts by script
    (`monitor.py`: the autoscaler monitor, `dashboard.py`: the dashboard head)."""
    name = proc.name()
    if name.startswith("python"):
        script = next((a for a in proc.cmdline()[1:] if a.endswith(".py")), None)
        return os.path.basename(script) if script else name
    return name


def _listening(root: psutil.Process) -> dict[tuple[int, str, str, int], str]:
    """{(pid, name, ip, port): what} of the LISTEN TCP sockets (and bound, unconnected UDP ones) of
    `root` and its descendants: the driver and the Ray it started (see reaper.py)."""
    out = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = "driver" if proc.pid == root.pid else _name(proc)
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    out[(proc.pid, name, conn.laddr.ip, conn.laddr.port)] = "tcp"
                elif conn.type == socket.SOCK_DGRAM and not conn.raddr:
                    out[(proc.pid, name, conn.laddr.ip, conn.laddr.port)] = "udp"
        except psutil.Error:
            continue
    return out


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_a_local_sweeps_ray_listens_only_on_loopback(tiny_data, tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="th", dir="/tmp"))  # AF_UNIX paths under it: keep it short
    home = tmp_path / "home"
    home.mkdir()
    autoscaler_port, dashboard_port = _free_ports(2)
    # The autoscaler monitor's and the dashboard head's Prometheus endpoints have fixed ports (44217,
    # 44227): another Ray on this machine holding them would leave those two unchecked.
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_TMPDIR=str(ray_tmp), HOME=str(home),
               AUTOSCALER_METRIC_PORT=str(autoscaler_port), DASHBOARD_METRIC_PORT=str(dashboard_port))
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    args = [sys.executable, "-m", "tune_hand", "search", "quick", "--data", str(tiny_data),
            "--storage", str(tmp_path / "st"), "--name", "lo", "--samples", "1"]
    for item in TINY + ["optim.epochs=2"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen: dict[tuple[int, str, str, int], str] = {}
    try:
        driver = psutil.Process(proc.pid)
        deadline = time.time() + 150
        while proc.poll() is None and time.time() < deadline:  # every socket over the sweep's life
            seen.update(_listening(driver))
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, out[-3000:]
    assert "1 finished" in out, out[-3000:]

    names = {name for _, name, _, _ in seen}
    # The sampling saw the whole Ray: GCS, raylet, agents, a trial's worker, and the driver's own server.
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, sorted(seen)
    assert any(n.startswith("ray::") and "Agent" not in n for n in names), sorted(seen)
    assert {"driver", "monitor.py", "dashboard.py"} <= names, sorted(seen)
    ports = {port for _, _, _, port in seen}
    assert {autoscaler_port, dashboard_port} <= ports, sorted(seen)

    offenders = [f"{name} (pid {pid}) {kind} {ip}:{port}" for (pid, name, ip, port), kind in sorted(seen.items())
                 if not _loopback(ip) and name not in KNOWN_EXCEPTIONS]
    assert offenders == [], "Ray sockets not on loopback:\n" + "\n".join(offenders)


def test_loopback_ray_restores_this_process_for_a_later_address(monkeypatch):
    """The loopback node IP is for the local Ray's start only: a later `--address` connection in
    the same process needs Ray's own answer (the machine's IP) back."""
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    from ray._private import ray_constants, services

    from tune_hand.sweep.loopback import loopback_ray

    before = ray_constants.ENABLE_RAY_CLUSTER
    with loopback_ray() as options:
        assert _loopback(options["_node_ip_address"])
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        assert _loopback(services.resolve_ip_for_localhost("127.0.0.1"))  # Ray's rewrite, now a no-op
    assert ray_constants.ENABLE_RAY_CLUSTER == before
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
