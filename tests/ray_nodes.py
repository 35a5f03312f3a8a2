"""Ray nodes started with `ray start` on loopback, for tests of a cluster: a head with the
dashboard (and so the job server) and workers, several "machines" on one host.

    with LocalCluster(tmp, token="abc") as cluster:
        cluster.start_head(num_cpus=1)
        w1 = cluster.add_worker("w1", num_cpus=2, num_gpus=2)
        ...
        w1.kill()            # SIGKILL the node: its raylet, its workers, its agents

Every node runs in its own process session (`ray start --block` as the session leader), so
killing a node is killing its session, and `shutdown()` kills every session it started and
nothing else: never `ray stop`, which stops every Ray on the machine (other test runs too).
Each node gets its own temp dir (short: Unix socket paths are limited to 107 bytes) and its
own ports, chosen free at random, so clusters of parallel test runs do not collide.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_range(width: int, tries: int = 200) -> int:
    """The first port of `width` consecutive ports free on 127.0.0.1, at a random place."""
    for _ in range(tries):
        base = random.randrange(20000, 60000 - width)
        socks = []
        try:
            for port in range(base, base + width):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {width} consecutive free ports found")


def session_processes(sid: int) -> list[int]:
    """PIDs of the live processes (zombies excluded) in process session `sid`."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) == sid and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(pid))
        except (OSError, IndexError):  # gone meanwhile
            continue
    return pids


class Node:
    def __init__(self, name: str, proc: subprocess.Popen, temp_dir: Path, log: Path):
        self.name, self.proc, self.temp_dir, self.log = name, proc, temp_dir, log
        self.sid = proc.pid  # start_new_session: the leader's pid is the session id

    def processes(self) -> list[int]:
        return session_processes(self.sid)

    def kill(self) -> None:
        """The machine dies: SIGKILL every process of the node at once."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the node (`ray start --block` stops its processes), then SIGKILL what is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.processes() and time.monotonic() < deadline:
            self.proc.poll()  # reap the leader
            time.sleep(0.2)
        self.kill()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class LocalCluster:
    """A head and workers on 127.0.0.1; a context manager that always cleans up."""

    def __init__(self, token: str | None = None, token_file: Path | None = None, env: dict[str, str] | None = None):
        """token: the cluster's token (RAY_AUTH_TOKEN), or token_file (RAY_AUTH_TOKEN_PATH); neither:
        no authentication."""
        self.root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.token = token or (token_file.read_text().strip() if token_file else None)
        self.env = dict(os.environ, RAY_AUTH_MODE="token" if self.token else "disabled", **(env or {}))
        for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(name, None)
        if token:
            self.env["RAY_AUTH_TOKEN"] = token
        elif token_file:
            self.env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
        # The nodes' `python` (job entrypoints) and `ray` are this test run's.
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.nodes: list[Node] = []
        self.gcs_port = self.dashboard_port = 0

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], num_cpus: int, num_gpus: int) -> Node:
        node_manager, object_manager, agent_http, agent_grpc, metrics, runtime_env = free_ports(6)
        workers = free_port_range(40)
        temp_dir = self.root / name
        log = self.root / f"{name}.log"
        cmd = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
               "--object-store-memory=100000000", f"--labels=tune_hand_test_node={name}",
               f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
               f"--min-worker-port={workers}", f"--max-worker-port={workers + 39}",
               f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}", *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node = Node(name, proc, temp_dir, log)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 1, num_gpus: int = 0, timeout: float = 90) -> Node:
        self.gcs_port, self.dashboard_port, client = free_ports(3)
        head = self._start("head", ["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                                    "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                                    f"--ray-client-server-port={client}"], num_cpus, num_gpus)
        # The job server answers once the dashboard's modules are up.
        self.wait_for(lambda: self.request("/api/version") is not None, timeout, "the head's dashboard", head)
        self.wait_for(lambda: len(self.alive_nodes()) >= 1, timeout, "the head node", head)
        return head

    def add_worker(self, name: str, num_cpus: int, num_gpus: int = 0, timeout: float = 90, wait: bool = True) -> Node:
        """Start a worker node; with wait=False return at once (start several, then `wait_alive`)."""
        node = self._start(name, [f"--address=127.0.0.1:{self.gcs_port}"], num_cpus, num_gpus)
        if wait:
            self.wait_alive([name], timeout)
        return node

    def wait_alive(self, names: list[str], timeout: float = 90) -> dict[str, str]:
        """Wait until the named nodes are alive; returns name -> Ray node id of every alive node."""
        nodes = {n.name: n for n in self.nodes}
        for name in names:
            self.wait_for(lambda name=name: name in self.alive_nodes(), timeout, f"node {name}", nodes.get(name))
        return self.alive_nodes()

    # The dashboard's REST API, with the token ---------------------------------------------------
    def request(self, path: str) -> dict | None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.dashboard + path, headers=headers),
                                        timeout=10) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def alive_nodes(self) -> dict[str, str]:
        """test node name -> Ray node id, for the nodes alive now."""
        reply = self.request("/api/v0/nodes?detail=1&limit=100") or {}
        out = {}
        for n in (reply.get("data") or {}).get("result", {}).get("result", []) or []:
            name = (n.get("labels") or {}).get("tune_hand_test_node")
            if name and n.get("state") == "ALIVE":
                out[name] = n["node_id"]
        return out

    def wait_for(self, condition, timeout: float, what: str, node: Node | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if node is not None and node.proc.poll() is not None:
                break
            time.sleep(0.5)
        log = f"\n--- {node.name} log ---\n{node.tail()}" if node else ""
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{log}")

    def shutdown(self) -> None:
        """Stop every node (workers first), kill what is left, remove the temp dirs."""
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[int]:
        return [pid for node in self.nodes for pid in node.processes()]
