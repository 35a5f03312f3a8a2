"""The Ray pieces of a sweep, driven directly: when ResumableASHA asks Ray for an experiment
snapshot, and what the live table prints. (Their effect on real sweeps: test_sweep_resume.py.)"""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

import pytest

from tune_hand.sweep import schedulers
from tune_hand.sweep.live_table import LiveTable
from tune_hand.sweep.schedulers import AshaStateCallback, ResumableASHA


class FakeController:
    """What the scheduler reaches: Ray's experiment checkpoint manager and its force flag."""

    def __init__(self):
        self._checkpoint_manager = SimpleNamespace(_should_force_sync_up=False)

    def snapshot(self) -> bool:
        """The end of a controller step: Ray saves (and clears the flag) when it was forced."""
        forced = self._checkpoint_manager._should_force_sync_up
        self._checkpoint_manager._should_force_sync_up = False
        return forced


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(schedulers.time, "monotonic", c)
    return c


def trial(trial_id: str, status: str = "RUNNING", config=None):
    return SimpleNamespace(trial_id=trial_id, status=status, config=config or {"optim.lr": 1e-3},
                           last_result={})


def scheduler():
    sched = ResumableASHA(time_attr="training_iteration", max_t=4, grace_period=1, reduction_factor=2,
                          metric="rr_mpjpe_mm", mode="min", min_snapshot_s=1.0)
    return sched, AshaStateCallback(sched)


def test_trial_endings_in_one_second_share_one_forced_snapshot(clock):
    sched, callback = scheduler()
    ctl = FakeController()
    a, b = trial("a"), trial("b")
    for t in (a, b):
        sched.on_trial_add(ctl, t)

    sched.on_trial_complete(ctl, a, {"training_iteration": 4, "rr_mpjpe_mm": 50.0})
    assert ctl.snapshot()  # the first ending is saved at the end of this very step
    clock.now += 0.3
    sched.on_trial_complete(ctl, b, {"training_iteration": 4, "rr_mpjpe_mm": 40.0})
    assert not ctl.snapshot()  # too soon after the last: due, not forced
    clock.now += 0.3
    callback.on_step_begin(iteration=2, trials=[a, b])
    assert not ctl.snapshot()
    clock.now += 0.5  # 1.1 s after the first: the step that begins now saves b's ending
    callback.on_step_begin(iteration=3, trials=[a, b])
    assert ctl.snapshot()
    clock.now += 5
    callback.on_step_begin(iteration=4, trials=[a, b])
    assert not ctl.snapshot()  # nothing due: Ray's own 10-s period applies


def test_a_result_makes_a_snapshot_due_and_the_schedulers_state_pickles_without_it(clock):
    sched, callback = scheduler()
    ctl = FakeController()
    a = trial("a")
    sched.on_trial_add(ctl, a)
    sched.on_trial_result(ctl, a, {"training_iteration": 1, "rr_mpjpe_mm": 60.0})
    assert ctl.snapshot()
    clock.now += 0.1
    sched.on_trial_result(ctl, a, {"training_iteration": 2, "rr_mpjpe_mm": 55.0})
    restored = pickle.loads(pickle.dumps(callback))  # as Ray saves both in tuner.pkl
    assert restored.scheduler._due is None and restored.scheduler.rungs() == sched.rungs()
    clock.now += 1.0
    callback.on_step_begin(iteration=1, trials=[a])
    assert ctl.snapshot()


def live_table(every: float = 30.0):
    out = io.StringIO()
    header = {"experiment": "/s/q", "spec_name": "quick", "spec_hash": "abc", "metric": "rr_mpjpe_mm",
              "mode": "min", "max_epochs": 4, "num_samples": 3, "space": ["optim.lr"]}
    return LiveTable(header, every=every, stream=out), out


def test_live_table_prints_a_line_per_ending_and_the_table_at_most_every_period(clock):
    table, out = live_table(every=30.0)
    trials = [trial("t1"), trial("t2"), trial("t3", status="PENDING")]
    table.on_trial_result(0, trials, trials[0], {"epoch": 1, "rr_mpjpe_mm": 80.0})
    table.on_trial_result(0, trials, trials[0], {"epoch": 2, "rr_mpjpe_mm": 70.5})
    table.on_trial_result(0, trials, trials[1], {"epoch": 1, "rr_mpjpe_mm": 90.0})
    assert out.getvalue() == ""  # nothing ended and the period has not passed
    trials[1].status = "TERMINATED"
    table.on_trial_complete(0, trials, trials[1])
    lines = out.getvalue().splitlines()
    assert lines == ["tune-hand: trial t2 stopped early after 1 epochs, best rr_mpjpe_mm 90.00 (epoch 1); "
                     "1/3 trials ended"]
    clock.now += 31  # the period passed: the next result brings the whole table
    table.on_trial_result(0, trials, trials[0], {"epoch": 3, "rr_mpjpe_mm": 65.0})
    text = out.getvalue()
    assert "t1" in text and "t3" in text and "65" in text and len(text.splitlines()) > 2
    size = len(text)
    trials[0].status = "TERMINATED"
    table.on_trial_result(0, trials, trials[0], {"epoch": 4, "rr_mpjpe_mm": 66.0})
    table.on_trial_complete(0, trials, trials[0])
    assert out.getvalue()[size:].splitlines() == [
        "tune-hand: trial t1 finished after 4 epochs, best rr_mpjpe_mm 65.00 (epoch 3); 2/3 trials ended"]
    table.on_experiment_end(trials)  # the final table, whatever the period
    assert "finished" in out.getvalue()[size:] and len(out.getvalue()[size:].splitlines()) > 2


def test_a_resumed_sweeps_table_keeps_the_best_of_trials_that_ran_before(clock):
    table, _ = live_table()
    trials = [trial("t1"), trial("t2")]
    table.on_trial_result(0, trials, trials[0], {"epoch": 1, "rr_mpjpe_mm": 70.0})
    table.on_trial_result(0, trials, trials[0], {"epoch": 2, "rr_mpjpe_mm": 75.0})
    trials[0].status = "TERMINATED"
    table.on_trial_complete(0, trials, trials[0])
    state = pickle.loads(pickle.dumps(table.get_state()))  # as Ray saves callback state
    resumed, out = live_table()
    resumed.set_state(state)
    trials[0].last_result = {"epoch": 2, "rr_mpjpe_mm": 75.0}  # what the restored trial carries
    resumed.on_trial_result(0, trials, trials[1], {"epoch": 1, "rr_mpjpe_mm": 72.0})
    trials[1].status = "TERMINATED"
    resumed.on_trial_complete(0, trials, trials[1])
    assert out.getvalue().splitlines()[0].endswith("2/3 trials ended")  # t1's ending still counts
    resumed.on_experiment_end(trials)
    assert "best: t1 rr_mpjpe_mm=70.000 at epoch 1" in out.getvalue()
