"""A sweep whose driver is killed (SIGKILL, no chance to save anything) and then resumed.

What a user relies on after `tune-hand resume`: the sweep ends with exactly num_samples trials;
a trial that had ended is not run again; a trial that was running continues from its last
checkpoint (no restart from epoch 1); Optuna's study continues with the trials it had; ASHA's
rung records from before the kill still judge the trials after it; nothing of Ray stays behind.
"""

import glob
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, kill_driver_session
from tune_hand.cli import main
from tune_hand.sweep import load_spec

pytestmark = pytest.mark.slow

SAMPLES = 5
EPOCHS = 6  # rungs at epochs 1, 2 and 4 (grace 1, reduction 2)


def _raw_epochs(trial_dir: Path) -> list[int]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line)["epoch"])
        except ValueError:
            pass
    return rows


def _snapshot_states(exp: Path) -> dict[str, str]:
    from tune_hand.sweep import ray_trial_states

    return ray_trial_states(exp)


def _newest_pickle(exp: Path, pattern: str):
    # Our own experiment's files, written by Ray moments ago: trusted input for this test.
    return pickle.loads(Path(sorted(glob.glob(str(exp / pattern)))[-1]).read_bytes())


def _rungs_replayed(exp: Path, metric: str) -> dict[int, dict[str, float]]:
    """What ASHA must have recorded: each trial's (deduplicated) value at each rung epoch."""
    from tune_hand.sweep import trial_dirs, trial_rows

    out: dict[int, dict[str, float]] = {1: {}, 2: {}, 4: {}}
    for trial_dir in trial_dirs(exp):
        for row in trial_rows(trial_dir):
            if row["epoch"] in out:
                out[row["epoch"]][row["trial_id"]] = -row[metric]
    return out


@pytest.fixture
def killed_sweep(tiny_data, tmp_path):
    """Start a sweep in its own process session; SIGKILL the whole session once one trial has ended
    and another is mid-way (past a checkpoint). Returns (exp, trial epochs and states before)."""
    exp = tmp_path / "st" / "k"
    args = [sys.executable, "-m", "tune_hand", "search", "quick", "--data", str(tiny_data),
            "--storage", str(tmp_path / "st"), "--name", "k", "--samples", str(SAMPLES)]
    for item in TINY + [f"optim.epochs={EPOCHS}"]:
        args += ["--set", item]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            states = _snapshot_states(exp) if exp.is_dir() else {}
            ended = [t for t, s in states.items() if s == "TERMINATED"]
            running = [t for t, s in states.items() if s == "RUNNING"
                       and len(_raw_epochs(next(exp.glob(f"*_{t}"), exp))) >= 2]
            if ended and running:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        before = {t: _raw_epochs(next(exp.glob(f"*_{t}"))) for t in states}
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
        proc.wait(timeout=30)
    finally:
        kill_driver_session(proc)
    return exp, before, _snapshot_states(exp)


def test_sigkilled_driver_resumes_without_losing_or_repeating_work(killed_sweep, capsys):
    from tune_hand.sweep import load_status

    exp, epochs_before, states_before = killed_sweep
    ended_before = {t for t, s in states_before.items() if s == "TERMINATED"}
    running_before = {t for t, s in states_before.items() if s == "RUNNING"}
    assert ended_before and running_before

    assert main(["resume", str(exp)]) == 0
    assert "has no" not in capsys.readouterr().err

    status = load_status(exp)
    trials = {t["trial_id"]: t for t in status["trials"]}
    assert len(trials) == SAMPLES  # no trial lost, none added beyond num_samples
    assert {t["state"] for t in trials.values()} <= {"finished", "stopped early"}
    assert set(_snapshot_states(exp).values()) == {"TERMINATED"}

    for trial_id in ended_before:  # ended before the kill: not run again
        assert _raw_epochs(next(exp.glob(f"*_{trial_id}"))) == epochs_before[trial_id], trial_id
    for trial_id in running_before:  # in flight: continued from a checkpoint, not from scratch
        raw = _raw_epochs(next(exp.glob(f"*_{trial_id}")))
        after = raw[len(epochs_before[trial_id]):]
        done = epochs_before[trial_id]
        if not done:  # killed before its first epoch reported: nothing to continue from
            continue
        assert after and 1 < after[0] <= max(done) + 1, (trial_id, done, after)
        assert after == list(range(after[0], after[0] + len(after))), (trial_id, after)
        assert sorted(set(raw)) == list(range(1, max(raw) + 1)), (trial_id, raw)

    # Optuna's study went on: the trials it had before the kill, then the new ones; none left open.
    searcher = _newest_pickle(exp, "searcher-state-*.pkl")
    study = searcher["_ot_study"]
    assert len(study.trials) == SAMPLES
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    ray_lr = {round(t["config"]["optim.lr"], 12) for t in trials.values()}
    assert {round(t.params["optim.lr"], 12) for t in study.trials} == ray_lr
    ids = searcher["_ot_trials"]
    assert {ids[t].number for t in states_before} == set(range(len(states_before)))
    for trial_id, t in trials.items():
        expected = {"finished": "COMPLETE", "stopped early": "PRUNED"}[t["state"]]
        assert ids[trial_id].number is not None and study.trials[ids[trial_id].number].state.name == expected

    # ASHA's rungs hold every trial's value at every rung it reached, before and after the kill.
    saved = _newest_pickle(exp, "callback-states-*.pkl")
    rungs = next(s["asha_rungs"] for s in saved.values() if s and "asha_rungs" in s)
    recorded = {int(m): r for m, r in rungs[0]}
    assert recorded == _rungs_replayed(exp, load_spec("quick").metric)
    assert set(recorded[1]) >= ended_before


def test_a_changed_spec_is_refused_and_the_same_submission_resumes(killed_sweep, tiny_data, capsys):
    exp, _, _ = killed_sweep
    spec_file = exp / "tune_hand_spec.yaml"
    original = spec_file.read_text()
    spec_file.write_text(original.replace("num_samples: 5", "num_samples: 9"))
    assert main(["resume", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "spec differs" in err and "num_samples: 5 -> 9" in err and len(err.strip().splitlines()) == 1
    spec_file.write_text(original)

    base = ["search", "quick", "--data", str(tiny_data), "--storage", str(exp.parent), "--name", "k",
            "--samples", str(SAMPLES)]
    sets = [a for item in TINY + [f"optim.epochs={EPOCHS}"] for a in ("--set", item)]
    assert main(base + sets + ["--set", "optim.lr=0.01"]) == 2  # pins a searched key: another sweep
    err = capsys.readouterr().err
    assert "spec differs" in err and "optim.lr" in err
    assert main(base + sets) == 0  # the same command again (a requeued job) resumes the sweep
    assert "resuming it" in capsys.readouterr().err
    from tune_hand.sweep import load_status

    assert len(load_status(exp)["trials"]) == SAMPLES
