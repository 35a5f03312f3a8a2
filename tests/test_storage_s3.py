"""Experiments in a bucket: `--storage s3://...`, and `resume`, `status`, `best` from the bucket alone.

The S3 API is moto's server (`pip install 'moto[server]'`) in its own process on a loopback
port; the endpoint reaches tune-hand, Ray and its trials the way a user's MinIO or Ceph
would: AWS_ENDPOINT_URL_S3 in the environment (and, for a reader, `?endpoint_override=` in
the URI). The test reads the bucket with boto3 to check what tune-hand says about it.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import TINY, kill_driver_session
from tune_hand.cli import main
from tune_hand.sweep import load_spec
from tune_hand.sweep.storage import join

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

BUCKET = "tune-hand-test"
SAMPLES = 4  # margin: the kill needs one trial ended while another is 2+ epochs in
EPOCHS = 4  # quick's rungs at epochs 1 and 2
SPEC = load_spec("quick")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a loopback port with our bucket; the AWS_* variables tune-hand (and
    the sweeps this module starts) use, set for the module. Yields (boto3 client, env, endpoint)."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-c", "import sys; from moto.server import main; main(sys.argv[1:])",
                               "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        deadline = time.time() + 60
        while True:
            assert server.poll() is None and time.time() < deadline, Path(log.name).read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        with pytest.MonkeyPatch.context() as mp:
            for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
                mp.delenv(key, raising=False)
            for key, value in env.items():
                mp.setenv(key, value)
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            yield client, env, endpoint
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _keys(client, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        keys += [o["Key"][len(prefix) + 1:] for o in page.get("Contents", [])]
    return keys


def _get(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _bucket_states(client, prefix: str) -> dict[str, str]:
    """trial_id -> Ray's status in the newest experiment_state-*.json (by name) in the bucket."""
    states = sorted(k for k in _keys(client, prefix) if k.startswith("experiment_state-") and "/" not in k)
    if not states:
        return {}
    data = json.loads(_get(client, f"{prefix}/{states[-1]}"))
    return {t["trial_id"]: t["status"] for t in (json.loads(e[0]) for e in data["trial_data"])}


def _bucket_rows(client, prefix: str) -> dict[str, list[dict]]:
    """trial directory name -> every row of its result.json in the bucket, in file order."""
    out = {}
    for key in _keys(client, prefix):
        if key.endswith("/result.json") and key.count("/") == 1:
            out[key.split("/")[0]] = [json.loads(line) for line in _get(client, f"{prefix}/{key}").decode().splitlines()
                                      if line.strip()]
    return out


def _epochs(rows_by_dir: dict[str, list[dict]], trial_id: str) -> list[int]:
    return next((([r["epoch"] for r in rows]) for d, rows in rows_by_dir.items() if d.endswith(f"_{trial_id}")), [])


def _one_line_error(capsys, *phrases: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tune-hand: error: "), err
    for phrase in phrases:
        assert phrase in err, err
    return err


# -- fast: URIs and errors --------------------------------------------------------------------
def test_join_keeps_a_uri_query_at_the_end():
    assert join("s3://bkt/sweeps?endpoint_override=h:9000&scheme=http", "q1", "x.json") == \
        "s3://bkt/sweeps/q1/x.json?endpoint_override=h:9000&scheme=http"
    assert join("s3://bkt/sweeps/", "q1") == "s3://bkt/sweeps/q1"
    assert join("/tmp/sweeps", "q1") == "/tmp/sweeps/q1"


def test_a_missing_bucket_or_experiment_is_a_one_line_error(s3, tiny_data, tmp_path, capsys):
    client, _, _ = s3
    missing = "s3://no-such-bucket-th/sweeps/q1"
    for args in (["status", missing], ["best", missing, "--export", str(tmp_path / "best")],
                 ["report", missing, "--out", str(tmp_path / "report")]):
        assert main(args) == 2
        _one_line_error(capsys, missing, "bucket 'no-such-bucket-th' does not exist")
    assert not (tmp_path / "best").exists() and not (tmp_path / "report").exists()

    absent = f"s3://{BUCKET}/sweeps/never-ran"
    for args in (["status", absent], ["resume", absent], ["best", absent, "--export", str(tmp_path / "best")]):
        assert main(args) == 2
        _one_line_error(capsys, absent, "no experiment there")
    assert not (tmp_path / "best").exists()

    # A search into a missing bucket is refused before anything is written or Ray starts.
    assert main(["search", "quick", "--data", str(tiny_data), "--storage", "s3://no-such-bucket-th/sweeps",
                 "--name", "q1"]) == 2
    _one_line_error(capsys, missing, "does not exist")
    assert _keys(client, "sweeps/never-ran") == []


# -- slow: a sweep in the bucket, killed, resumed from the bucket alone ------------------------
def _remove_when_unused(path: Path, timeout: float = 30) -> None:
    """rmtree `path` once no process names it on its command line (Ray's helpers of a killed
    session take a moment to exit and may still write there)."""
    deadline = time.time() + timeout
    marker = str(path).encode()
    while time.time() < deadline:
        users = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                    users.append(pid)
            except OSError:
                continue
        if not users:
            break
        time.sleep(0.5)
    shutil.rmtree(path, ignore_errors=True)


def _cli(env: dict, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tune_hand", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_a_bucket_sweep_killed_resumes_from_the_bucket_and_best_reads_it(s3, tiny_data, make_freihand, tmp_path,
                                                                         capsys):
    client, aws_env, endpoint = s3
    storage, prefix = f"s3://{BUCKET}/sweeps", "sweeps/k"
    exp = f"{storage}/k"
    # Ray's local files (session, driver staging, trial working dirs) in a directory of our
    # own, deleted after the kill: the resume must find everything in the bucket. Short path:
    # Ray's sockets live under it (108-byte limit).
    ray_tmp = Path(tempfile.mkdtemp(prefix="th-s3-", dir="/tmp"))
    env = dict(os.environ, **aws_env, RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(ray_tmp))
    sets = [a for item in TINY + [f"optim.epochs={EPOCHS}"] for a in ("--set", item)]
    search = ["search", "quick", "--data", str(tiny_data), "--storage", storage, "--name", "k",
              "--samples", str(SAMPLES)] + sets
    proc = subprocess.Popen([sys.executable, "-m", "tune_hand", *search], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # Kill once the bucket shows one trial ended and another mid-way (2+ epochs reported).
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            states, rows = _bucket_states(client, prefix), _bucket_rows(client, prefix)
            ended = [t for t, s in states.items() if s == "TERMINATED"]
            running = [t for t, s in states.items() if s == "RUNNING" and len(_epochs(rows, t)) >= 2]
            if ended and running:
                break
            time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_driver_session(proc)
    _remove_when_unused(ray_tmp)
    states_before, rows_before = _bucket_states(client, prefix), _bucket_rows(client, prefix)
    ended_before = {t for t, s in states_before.items() if s == "TERMINATED"}
    running_before = {t for t, s in states_before.items() if s == "RUNNING"}
    assert ended_before and running_before

    # The same name under another spec is refused from the bucket's files, as locally.
    assert main(search + ["--set", "optim.lr=0.01"]) == 2
    _one_line_error(capsys, exp, "spec differs", "optim.lr")

    ray_tmp = Path(tempfile.mkdtemp(prefix="th-s3-", dir="/tmp"))
    try:
        done = _cli(dict(env, RAY_TMPDIR=str(ray_tmp)), "resume", exp, timeout=300)
    finally:
        _remove_when_unused(ray_tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped before all trials ended" not in done.stderr

    # What the bucket holds now, read with boto3: every trial ended, none lost or added.
    states, rows = _bucket_states(client, prefix), _bucket_rows(client, prefix)
    assert len(states) == SAMPLES and set(states.values()) == {"TERMINATED"}
    assert len(rows) == SAMPLES
    for trial_id in ended_before:  # ended before the kill: not run again
        assert _epochs(rows, trial_id) == _epochs(rows_before, trial_id), trial_id
    for trial_id in states:  # no epoch lost: each trial reported 1..its last epoch
        epochs = sorted(set(_epochs(rows, trial_id)))
        assert epochs == list(range(1, max(epochs) + 1)), (trial_id, epochs)
    for trial_id in running_before:  # in flight at the kill: continued from a checkpoint, not from epoch 1
        before, raw = _epochs(rows_before, trial_id), _epochs(rows, trial_id)
        assert raw[:len(before)] == before and 1 < raw[len(before)] <= max(before) + 1, (trial_id, before, raw)

    # The best trial-epoch, straight from the bucket's result rows (the last report of an epoch wins).
    sign = 1 if SPEC.mode == "min" else -1
    final = [dict(row) for rs in rows.values() for row in {r["epoch"]: r for r in rs}.values()]
    expected = min(final, key=lambda r: sign * r[SPEC.metric])

    assert main(["status", exp, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["experiment"] == exp and len(status["trials"]) == SAMPLES
    assert {t["state"] for t in status["trials"]} <= {"finished", "stopped early"}
    assert (status["best"]["trial_id"], status["best"]["best_epoch"]) == (expected["trial_id"], expected["epoch"])
    assert status["best"]["best_metric"] == pytest.approx(expected[SPEC.metric])

    # `best --export` fetches one checkpoint: the best epoch's, byte for byte.
    from tune_hand.sweep import storage

    fetched = []
    real_fetch = storage.ExperimentDir.fetch

    def counting_fetch(self, rel, dest=None):
        fetched.append(rel)
        return real_fetch(self, rel, dest)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage.ExperimentDir, "fetch", counting_fetch)
        assert main(["best", exp, "--export", str(tmp_path / "best")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["trial_id"], out["epoch"]) == (expected["trial_id"], expected["epoch"])
    assert out["checkpoint"].startswith(next(d for d in rows if d.endswith(f"_{expected['trial_id']}")))
    assert [f for f in fetched if f.endswith(".pt")] == [out["checkpoint"]]
    assert (tmp_path / "best" / "checkpoint.pt").read_bytes() == _get(client, f"{prefix}/{out['checkpoint']}")

    # The report and retrain read the bucket too (retrain exports the best trial before it checks
    # the dataset: a dataset without an evaluation split stops it there, before any training).
    assert main(["report", exp, "--out", str(tmp_path / "report")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "predictions.png" in report["figures"]  # drawn from the best checkpoint, fetched from the bucket
    assert len(json.loads((tmp_path / "report" / "status.json").read_text())["trials"]) == SAMPLES
    no_eval = make_freihand(tmp_path / "no_eval", n_unique=3, versions=1, n_eval=0, image_size=64)
    assert main(["retrain", exp, "--data", str(no_eval), "--out", str(tmp_path / "final")]) == 2
    capsys.readouterr()
    provenance = json.loads((tmp_path / "final" / "best" / "provenance.json").read_text())
    assert (provenance["experiment"], provenance["trial_id"]) == (exp, expected["trial_id"])

    # The endpoint may ride in the URI instead of the environment (pyarrow's query options).
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_ENDPOINT_URL_S3")
        port = endpoint.rsplit(":", 1)[1]
        assert main(["status", f"{exp}?endpoint_override=127.0.0.1:{port}&scheme=http", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best"] == status["best"]
