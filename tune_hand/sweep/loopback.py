"""Keep the local Ray that a sweep starts (no `--address`) on this machine's loopback interface.

    with loopback_ray() as options:
        ray.init(address="local", **options, ...)

By default Ray on Linux gives its node the machine's outward IP: `ray.init(_node_ip_address=
"127.0.0.1")` alone does not help, because `ray._private.services.resolve_ip_for_localhost`
rewrites a loopback address to that IP. Every component then listens on the node IP or on all
interfaces: measured with Ray 2.60, GCS, raylet (node manager and object manager), the core
workers' gRPC servers in the driver and in every worker bound `::`; the dashboard agent's gRPC
server (metrics agent) `::`, its metrics export endpoint `0.0.0.0`, its HTTP server the node IP
and 127.0.0.1; the runtime-env agent the node IP; the autoscaler monitor's and the dashboard
head's Prometheus endpoints (44217, 44227) `0.0.0.0`.

Ray itself already has the loopback-only mode, for single-node Ray on macOS and Windows: when
`ray._private.ray_constants.ENABLE_RAY_CLUSTER` is false (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`),
`services.get_node_ip_address()` answers `get_localhost_ip()` (127.0.0.1, or ::1 on an IPv6-only
host), and every component above, C++ and Python, binds the loopback address when the node IP is
a loopback address (Python: the `is_localhost(ip)` checks in dashboard/agent.py, head.py,
http_server_agent.py, autoscaler/_private/monitor.py; the C++ gRPC servers then listen on
`::ffff:127.0.0.1`, IPv4-mapped loopback). Measured after: no Ray socket listens on anything but
loopback, and a Ray Tune run works unchanged. So this turns that mode on, for the local Ray only:

- `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` in the environment while `ray.init` runs: Ray reads it
  when it is imported, so it is what the processes `ray.init` starts (GCS, raylet, agents,
  monitor, dashboard head, and through the raylet every worker) see; they keep it (harmless:
  a worker takes its node IP from its node). Restored in this process afterwards.
- `ray._private.ray_constants.ENABLE_RAY_CLUSTER = False` in this process while `ray.init` runs
  (a monkeypatch of the value behind `resolve_ip_for_localhost`): this process has imported
  Ray by then (a resume imports Ray Tune before it starts its Ray), so the variable can no
  longer take effect here. Restored afterwards: once `ray.init` returned, Ray takes the node IP
  from the running node, and a later `--address` connection in the same process must again see
  the machine's real IP.
- `_node_ip_address` set to the loopback address, so the node's address is explicit.

Nothing is left that cannot be made loopback-only in Ray 2.60 (the test `tests/test_loopback.py`
lists every LISTEN socket of this Ray's processes during a run). Not covered: UNIX sockets
(raylet, plasma store) are files in Ray's session dir, protected by file permissions, not
addresses; any user on this machine can still reach loopback ports, for which token auth
(`RAY_AUTH_MODE=token`, which the driver sets for the local Ray) stays the guard; and the fixed
ports (dashboard agent 52365, Prometheus 44217 and 44227) still collide with another Ray on the
same machine (that endpoint then stays off, as before). Never for `--address`: a cluster's nodes
must reach each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_ray() -> Iterator[dict[str, Any]]:
    """Around `ray.init(address="local", ...)`: yields the extra `ray.init` options; while it is
    open, a Ray started here takes the loopback address as its node IP (see the module docstring)."""
    # Ray imported first, under the caller's environment: the flag restored on leaving is then
    # this process's own, not one that our variable fixed at import (which would send a later
    # `--address` connection's driver to 127.0.0.1).
    from ray._common.network_utils import get_localhost_ip
    from ray._private import ray_constants

    old_env = os.environ.get(CLUSTER_ENV)
    old_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_ENV] = "0"  # what the processes ray.init starts read when they import Ray
    ray_constants.ENABLE_RAY_CLUSTER = False  # what this one reads
    try:
        yield {"_node_ip_address": get_localhost_ip()}
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(CLUSTER_ENV, None)
        else:
            os.environ[CLUSTER_ENV] = old_env
