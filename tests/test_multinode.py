"""A sweep submitted to a cluster of three nodes on loopback, one of which dies mid-sweep.

A head (the dashboard and the sweep driver, as a Ray job; no GPUs, so it runs no trials) and
two workers that each advertise 2 (fake) GPUs, all started with `ray start` and token
authentication; storage is a directory both workers see. What a user relies on:
  - `tune-hand submit` runs the sweep as a job; trials run on both workers, one per GPU,
    each with its own CUDA_VISIBLE_DEVICES (torch's CPU build trains on the CPU anyway);
  - a worker node that dies (SIGKILL of everything it runs) loses nothing: its unfinished
    trials resume on the surviving node from their last checkpoints, and the job succeeds
    with every trial ended, as `tune-hand status` shows from the storage alone;
  - a node that cannot see the dataset fails its trial at once with the path and the node named,
    on each of the spec's max_failures retries; the sweep ends instead of hanging.
"""

import json
import socket
import time
from pathlib import Path

import pytest

from conftest import TINY, raylet_processes
from ray_nodes import LocalCluster
from tune_hand.cli import main
from tune_hand.errors import DataError
from tune_hand.jobs import Jobs, write_token

SAMPLES = 4
EPOCHS = 6
# ASHA's only rung is at epoch 5: a trial that has reported at most epoch 4 is still running.
SPEC = f"""\
name: multinode
base: small
fixed: {{data.num_workers: 0}}
space:
  optim.lr: {{type: loguniform, low: 3.0e-4, high: 3.0e-3}}
metric: rr_mpjpe_mm
mode: min
scheduler: {{type: asha, grace_period: {EPOCHS - 1}, reduction_factor: 2, max_epochs: {EPOCHS}}}
num_samples: {SAMPLES}
max_concurrent_trials: 4
resources: {{gpu: 1, cpu: 1}}
seed: 0
max_failures: 2
"""
# A dead node is noticed in ~3 s, not Ray's 15 s or more (a check every 3 s, 5 misses of up to 10 s);
# no idle workers started ahead: every worker here runs in the job's runtime env (the shipped
# packages), which an idle default worker lacks.
NODE_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3", "RAY_enable_worker_prestart": "0"}


def test_a_trial_on_a_node_without_the_dataset_fails_at_once_naming_path_and_node(tmp_path):
    from trainables.hand_pose import train_hand_pose

    missing = tmp_path / "not-mounted"
    with pytest.raises(DataError) as err:
        train_hand_pose({}, spec={"name": "x"}, data_dir=str(missing))
    assert str(missing) in str(err.value) and socket.gethostname() in str(err.value)


def _rows(exp: Path) -> dict[str, list[dict]]:
    """trial_id -> every row its result.json holds, in order (a retried trial's too)."""
    out = {}
    for path in exp.glob("train_hand_pose_*/result.json"):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line being written
                pass
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def _attempts(rows: dict[str, list[dict]]) -> list[dict]:
    """One entry per (trial, process): node, device, and the interval it surely held the device.

    Ray's `timestamp` is whole seconds, so an attempt surely ran from its first report's
    (timestamp + 1 - time_this_iter_s) to its last report's timestamp."""
    spans: dict[tuple, dict] = {}
    for trial_id, trial_rows in rows.items():
        for r in trial_rows:
            key = (trial_id, r["node_id"], r["pid"])
            span = spans.setdefault(key, {"trial": trial_id, "node": r["node_id"], "device": r["cuda_visible_devices"],
                                          "start": r["timestamp"] + 1 - r["time_this_iter_s"], "end": r["timestamp"]})
            span["end"] = r["timestamp"]
            assert span["device"] == r["cuda_visible_devices"], (trial_id, r)
    return list(spans.values())


@pytest.mark.slow
def test_a_submitted_sweep_survives_losing_a_gpu_worker(tiny_data, tmp_path, capsys):
    token_file = write_token(tmp_path / "cluster_token")
    storage = tmp_path / "storage"  # "shared": both workers see this directory
    spec_file = tmp_path / "multinode.yaml"
    spec_file.write_text(SPEC)
    exp = storage / "mn"
    start = time.monotonic()
    with LocalCluster(token_file=token_file, env=NODE_ENV) as cluster:
        try:
            cluster.start_head(num_cpus=1, num_gpus=0)
            cluster.add_worker("w1", num_cpus=2, num_gpus=2, wait=False)
            victim = cluster.add_worker("w2", num_cpus=2, num_gpus=2, wait=False)
            ids = cluster.wait_alive(["w1", "w2"])
            setup = time.monotonic() - start

            sets = [a for item in TINY + [f"optim.epochs={EPOCHS}"] for a in ("--set", item)]
            assert main(["submit", "--address", cluster.dashboard, "--token-file", str(token_file),
                         "--storage", str(storage), "--", "search", str(spec_file), "--data", str(tiny_data),
                         "--name", "mn", *sets]) == 0
            job_id = json.loads(capsys.readouterr().out)["job_id"]
            jobs = Jobs(cluster.dashboard, token_file)

            def on_both_and_midway_on_victim() -> bool:
                assert jobs.status(job_id) not in ("SUCCEEDED", "FAILED", "STOPPED"), "the job ended early"
                rows = _rows(exp)
                nodes = {r["node_id"] for trial_rows in rows.values() for r in trial_rows}
                midway = [t for t, trial_rows in rows.items()
                          if trial_rows[-1]["node_id"] == ids["w2"] and trial_rows[-1]["epoch"] <= EPOCHS - 2]
                return {ids["w1"], ids["w2"]} <= nodes and bool(midway)

            cluster.wait_for(on_both_and_midway_on_victim, 150, "trials on both workers, one midway on w2")
            before = _rows(exp)
            victim.kill()
            killed_at = time.time()
            killed = time.monotonic() - start
            status = jobs.wait(job_id, timeout=200)
            assert status == "SUCCEEDED", status
            total = time.monotonic() - start

            # Then a sweep whose dataset the node cannot see: each try fails at once, naming path and node.
            missing = tmp_path / "not-mounted"
            nodata_spec = tmp_path / "nodata.yaml"
            nodata_spec.write_text(SPEC.replace("max_failures: 2", "max_failures: 1"))
            assert main(["submit", "--address", cluster.dashboard, "--token-file", str(token_file),
                         "--storage", str(storage), "--", "search", str(nodata_spec), "--data", str(missing),
                         "--name", "bad", "--samples", "1", *sets]) == 0
            bad_id = json.loads(capsys.readouterr().out)["job_id"]
            bad_status = jobs.wait(bad_id, timeout=150)
            bad_seconds = time.monotonic() - start - total
            bad_logs = jobs.logs(bad_id)
        except BaseException:
            print(f"--- job logs ---\n{_job_logs(cluster, token_file)}")
            for node in cluster.nodes:
                print(f"--- {node.name} ---\n{node.tail(2000)}")
            raise
    assert not cluster.leftovers()
    assert all(raylet_processes(node.sid) == [] for node in cluster.nodes)

    workers = {ids["w1"], ids["w2"]}
    assert {r["node_id"] for rows in before.values() for r in rows} == workers  # both ran trials before the kill
    rows = _rows(exp)
    name = {ids["w1"]: "w1", ids["w2"]: "w2"}
    with capsys.disabled():  # the timeline, for the log (-s): trial epoch:node/GPU ...
        print(f"\ncluster up {setup:.0f}s, w2 killed at {killed:.0f}s, sweep done at {total:.0f}s, "
              f"sweep without its dataset ended in {bad_seconds:.0f}s")
        for t, trial_rows in sorted(rows.items()):
            print(f"  {t} " + " ".join(f"{r['epoch']}:{name.get(r['node_id'], '?')}/{r['cuda_visible_devices']}"
                                       for r in trial_rows))
    assert len(rows) == SAMPLES
    for trial_id, trial_rows in rows.items():
        for r in trial_rows:
            assert r["node_id"] in workers, (trial_id, r["node_id"])  # never the GPU-less head
            assert r["cuda_visible_devices"] in ("0", "1"), (trial_id, r["cuda_visible_devices"])  # one GPU each
            assert r["node_id"] != ids["w2"] or r["timestamp"] <= killed_at + 1
        epochs = sorted({r["epoch"] for r in trial_rows})
        assert epochs == list(range(1, max(epochs) + 1)), (trial_id, epochs)

    # Per node and GPU, one trial at a time.
    attempts = _attempts(rows)
    for i, a in enumerate(attempts):
        for b in attempts[i + 1:]:
            if a["node"] == b["node"] and a["device"] == b["device"]:
                assert a["end"] < b["start"] or b["end"] < a["start"], (a, b)

    # The victim's unfinished trials went on on the survivor from their last checkpoint.
    resumed = {}
    for trial_id, trial_rows in rows.items():
        on_victim = [r["epoch"] for r in trial_rows if r["node_id"] == ids["w2"]]
        after = [r["epoch"] for r in trial_rows if r["node_id"] == ids["w1"]]
        if on_victim and after:
            resumed[trial_id] = (on_victim, after)
            assert after[0] == max(on_victim) + 1, (trial_id, on_victim, after)  # not from epoch 1
            assert after == list(range(after[0], after[0] + len(after))), (trial_id, after)
    assert resumed, {t: [(r["epoch"], r["node_id"][:6]) for r in rs] for t, rs in rows.items()}

    capsys.readouterr()
    assert main(["status", str(exp), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert len(status["trials"]) == SAMPLES == status["num_samples"]
    assert {t["state"] for t in status["trials"]} <= {"finished", "stopped early"}, status["trials"]

    # The dataset no node has: the job ended (no hang); the trial failed on its first try and on
    # each of its max_failures retries, each time naming the path and the node.
    assert bad_status in ("SUCCEEDED", "FAILED"), bad_status
    message = (f"{missing}: no FreiHAND dataset (training_K.json) on node {socket.gethostname()} "
               f"(Ray node {ids['w1']})")
    assert message in bad_logs, bad_logs[-3000:]
    (error_file,) = (storage / "bad").glob("train_hand_pose_*/error.txt")
    assert error_file.read_text().count(message) == 2  # the first try and max_failures=1 retry
    assert main(["status", str(storage / "bad"), "--json"]) == 0
    assert [t["state"] for t in json.loads(capsys.readouterr().out)["trials"]] == ["error"]


def _job_logs(cluster: LocalCluster, token_file: Path) -> str:
    try:
        jobs = Jobs(cluster.dashboard, token_file)
        return "\n".join(f"[{row['id']} {row['status']}]\n{jobs.logs(row['id'])[-6000:]}" for row in jobs.list())
    except Exception as e:  # diagnostics only
        return f"(no job logs: {e})"
