"""A sweep's life after launch: names, one driver per experiment, damaged state, budgets, fork.

What a user relies on:
- `--name` is one path segment; anything else is refused and creates nothing;
- a second driver of a running experiment fails at once naming the first, which ends with
  exactly num_samples trials; a dead driver's lock is taken over with a warning;
- with Ray's experiment state gone, `resume` refuses in one line instead of starting over;
- a budget stops a sweep at epoch boundaries within budget + one epoch per running trial, a
  resume trains nothing more, and only a new `--budget-hours` continues it;
- `fork` carries unchanged finished trials (not rerun), trains only the new ones, tells Optuna
  the old trials, and `--epochs` continues trials from their checkpoints.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY, kill_driver_session
from tune_hand.cli import main
from tune_hand.sweep import load_status

pytestmark = pytest.mark.slow


def _sets(extra=()):
    return [a for item in [*TINY, *extra] for a in ("--set", item)]


def _fifo_spec(tmp_path: Path, samples: int, epochs: int) -> Path:
    """The quick spec under FIFO (every trial runs its budget), for exact trial counts."""
    from search_spaces import SPEC_DIR

    raw = yaml.safe_load((Path(SPEC_DIR) / "quick.yaml").read_text())
    raw.update(scheduler={"type": "fifo", "max_epochs": epochs}, num_samples=samples, name="fifo")
    path = tmp_path / "fifo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _rows(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


# -- names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ".", "", "x y", "/abs", "ok\n"])
def test_a_name_that_is_not_one_path_segment_is_refused_and_creates_nothing(name, tiny_data, tmp_path, capsys):
    storage = tmp_path / "deep" / "st"
    for command in (["search", "quick", "--data", str(tiny_data), "--storage", str(storage), "--name", name],):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--name" in err[0]
    assert not (tmp_path / "deep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- one driver per experiment ------------------------------------------------------------------
def test_a_second_driver_is_refused_at_once_and_the_first_ends_with_num_samples(tiny_data, tmp_path, capsys):
    storage = tmp_path / "st"
    args = [sys.executable, "-m", "tune_hand", "search", "quick", "--data", str(tiny_data), "--storage",
            str(storage), "--name", "one", "--samples", "2", *_sets(["optim.epochs=2"])]
    first = subprocess.Popen(args, env=dict(os.environ, RAY_AUTH_MODE="disabled"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lock = storage / "one" / "driver.lock"
        deadline = time.time() + 60
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert lock.exists(), "the first driver never took the lock"
        start = time.perf_counter()
        code = main(["search", "quick", "--data", str(tiny_data), "--storage", str(storage), "--name", "one",
                     "--samples", "2", *_sets(["optim.epochs=2"])])
        assert code == 2 and time.perf_counter() - start < 10
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another driver" in err[0] and f"pid {first.pid}" in err[0] \
            and socket.gethostname() in err[0], err
        assert main(["resume", str(storage / "one")]) == 2  # resume is a driver too
        assert "another driver" in capsys.readouterr().err
        _, stderr = first.communicate(timeout=240)
        assert first.returncode == 0, stderr[-2000:]
    finally:
        kill_driver_session(first)
    status = load_status(storage / "one")
    assert len(status["trials"]) == 2 and {t["state"] for t in status["trials"]} <= {"finished", "stopped early"}
    assert not lock.exists()  # released at the end


def test_a_dead_drivers_lock_is_taken_over_with_a_warning_and_a_live_one_is_not(tmp_path, capsys):
    from tune_hand.sweep.lock import DriverLock, ExperimentBusy

    exp = tmp_path / "e"
    exp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (exp / "driver.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": time.time(),
                                                 "heartbeat": time.time(), "token": "old"}))
    with DriverLock(str(exp)) as held:
        assert f"no process {pid}" in capsys.readouterr().err
        assert json.loads((exp / "driver.lock").read_text())["token"] == held.token
        with pytest.raises(ExperimentBusy, match=f"pid {os.getpid()}"):
            DriverLock(str(exp)).acquire()
    assert not (exp / "driver.lock").exists()
    # Another host's lock: alive while its heartbeat is fresh, stale once it is old.
    (exp / "driver.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": time.time(),
                                                 "heartbeat": time.time(), "token": "x"}))
    with pytest.raises(ExperimentBusy, match="host elsewhere"):
        DriverLock(str(exp)).acquire()
    (exp / "driver.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": 0, "heartbeat": 0,
                                                 "token": "x"}))
    with DriverLock(str(exp)):
        assert "no heartbeat" in capsys.readouterr().err


# -- budgets, damaged state ------------------------------------------------------------------------
def test_a_budget_stops_the_sweep_resume_trains_nothing_and_a_new_budget_continues(tiny_data, tmp_path, capsys):
    storage, budget = tmp_path / "st", 0.0008  # ~3 CPU-seconds: spent during the first epochs
    spec = _fifo_spec(tmp_path, samples=4, epochs=3)
    assert main(["search", str(spec), "--data", str(tiny_data), "--storage", str(storage), "--name", "b",
                 *_sets(), "--budget-hours", str(budget)]) == 0
    out = capsys.readouterr()
    assert "budget" in out.err and "--budget-hours" in out.err
    info = json.loads(out.out.strip().splitlines()[-1])
    assert info["budget_spent"] is True
    status = load_status(storage / "b")
    cost = status["cost"]
    assert set(cost) >= {"resource_hours", "budget_hours", "gpu_hours", "cpu_hours", "wall_hours"}
    assert cost["budget_hours"] == budget and cost["gpu_hours"] == 0 and cost["cpu_hours"] == cost["resource_hours"]
    epochs = {t["trial_id"]: t["epochs"] for t in status["trials"]}
    assert sum(epochs.values()) < 4 * 3  # stopped before the trials were done
    # Within the budget plus one epoch per running trial (2 run at once).
    longest = max(r["time_this_iter_s"] for d in (storage / "b").glob("train_*") for r in _rows(d)) / 3600
    assert cost["resource_hours"] <= budget + 2 * longest
    assert all(t["resource_hours"] >= 0 for t in status["trials"])

    assert main(["resume", str(storage / "b")]) == 0  # spent: trains nothing
    assert "budget" in capsys.readouterr().err
    assert {t["trial_id"]: t["epochs"] for t in load_status(storage / "b")["trials"]} == epochs

    assert main(["resume", str(storage / "b"), "--budget-hours", "1"]) == 0
    capsys.readouterr()
    after = load_status(storage / "b")
    assert len(after["trials"]) == 4 and {t["state"] for t in after["trials"]} == {"finished"}
    for trial_id, n in epochs.items():  # paused trials went on from their checkpoints
        rows = _rows(next((storage / "b").glob(f"*_{trial_id}")))
        assert [r["epoch"] for r in rows] == list(range(1, 4)), (trial_id, n)
    assert after["cost"]["budget_hours"] == 1


@pytest.fixture(scope="module")
def parent(tiny_data, tmp_path_factory):
    """A finished 3-trial FIFO sweep of 2 epochs: the experiment the fork tests start from."""
    tmp = tmp_path_factory.mktemp("parent")
    spec = _fifo_spec(tmp, samples=3, epochs=2)
    assert main(["search", str(spec), "--data", str(tiny_data), "--storage", str(tmp / "st"), "--name", "p",
                 *_sets()]) == 0
    return tmp / "st" / "p"


def test_resume_without_rays_experiment_state_is_refused_in_one_line(parent, tmp_path, capsys):
    import shutil

    exp = tmp_path / "st" / "p"
    shutil.copytree(parent, exp)
    for state in exp.glob("experiment_state-*.json"):
        state.unlink()
    before = sorted(p.name for p in exp.iterdir())
    assert main(["resume", str(exp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiment_state" in err[0] and "fork" in err[0]
    assert sorted(p.name for p in exp.iterdir()) == before  # nothing started, nothing written
    (exp / "tuner.pkl").write_bytes(b"")  # the same for a torn Ray state file
    next(iter(sorted(exp.glob("train_*")))).joinpath("x").write_text("")
    shutil.copy(next(parent.glob("experiment_state-*.json")), exp)
    (next(exp.glob("experiment_state-*.json"))).write_text("{not json")
    assert main(["resume", str(exp)]) == 2
    assert "unreadable" in capsys.readouterr().err


# -- fork ------------------------------------------------------------------------------------------
def test_fork_carries_the_finished_trials_and_trains_only_the_new_ones(parent, capsys):
    parent_status = load_status(parent)
    assert main(["fork", str(parent), "--name", "f5", "--samples", "5"]) == 0
    capsys.readouterr()
    exp = parent.parent / "f5"
    status = load_status(exp)
    assert len(status["trials"]) == 5
    carried = [t for t in status["trials"] if t.get("carried_from")]
    assert sorted(t["carried_from"] for t in carried) == sorted(f"p/{t['trial_id']}" for t in parent_status["trials"])
    assert {t["state"] for t in carried} == {"finished"}
    assert status["forked_from"]["carried"] == 3 and status["forked_from"]["warm_started"] == 3
    # Only the 2 new trials ran: the carried ones' result rows are the parent's, untouched.
    trained = [d for d in exp.glob("train_*") if not (d / "tune_hand_carried.json").exists()]
    assert len(trained) == 2
    for t in carried:
        assert _rows(exp / t["dir"]) == _rows(parent / t["dir"])
    assert status["best"]["best_metric"] <= parent_status["best"]["best_metric"]
    # The new study heard the old trials: their values are in Optuna's state before its own.
    out = exp.parent / "f5best"
    assert main(["best", str(exp), "--export", str(out)]) == 0
    capsys.readouterr()
    assert (out / "checkpoint.pt").is_file()


def test_fork_with_more_epochs_continues_trials_from_their_checkpoints(parent, capsys):
    assert main(["fork", str(parent), "--name", "e3", "--epochs", "3", "--samples", "3"]) == 0
    capsys.readouterr()
    exp = parent.parent / "e3"
    status = load_status(exp)
    assert status["max_epochs"] == 3 and len(status["trials"]) == 3
    for trial_dir in exp.glob("train_*"):
        rows = _rows(trial_dir)
        trained = [r for r in rows if not r.get("replayed_from")]
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        assert trained[0]["epoch"] == 3  # the first new row: from the epoch-2 checkpoint, not from scratch
        origin = rows[0]["replayed_from"].split("/")[1]
        parent_rows = _rows(next(parent.glob(f"*_{origin}")))
        assert [r["pa_mpjpe_mm"] for r in rows[:2]] == [r["pa_mpjpe_mm"] for r in parent_rows]


def test_a_fork_with_incomparable_results_carries_nothing_and_says_why(parent, capsys):
    assert main(["fork", str(parent), "--name", "other", "--samples", "1", "--set",
                 "model.target=root_relative"]) == 0
    err = capsys.readouterr().err
    assert "nothing carried" in err and "model.target" in err
    status = load_status(parent.parent / "other")
    assert len(status["trials"]) == 1 and not any(t.get("carried_from") for t in status["trials"])
    assert main(["fork", str(parent), "--name", "p"]) == 2  # itself
    assert main(["fork", str(parent), "--name", "other"]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
