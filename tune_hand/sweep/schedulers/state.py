"""The callback that carries a scheduler's state through Ray's experiment snapshots.

Ray never saves a scheduler (`TrialScheduler.save` exists but nothing calls it; ray#30838), so
a resumed scheduler would start empty. Callbacks, however, are saved with every experiment
snapshot (`callback-states-*.pkl`, beside the searcher's state and written at the same moment
as `experiment_state-*.json`), so `AshaStateCallback` stores `scheduler.save_state()` there and
hands it back to `scheduler.load_state()` on restore. Ray pickles the scheduler and the callback
together in `tuner.pkl`, so the restored callback still holds the restored scheduler; and Ray
restores callback state before it re-adds the restored trials, which is when each scheduler
re-attaches its per-trial records. The name says ASHA because sweeps written before the other
schedulers pickled it so; it serves every scheduler.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from ray.tune import Callback

from .. import budget
from ._base import SnapshotOnProgress


class AshaStateCallback(Callback):
    """Saves the scheduler's state with each experiment checkpoint and restores it on resume;
    forces the snapshots the scheduler has marked due (see `SnapshotOnProgress`)."""

    def __init__(self, scheduler: SnapshotOnProgress):
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any]:
        save = getattr(self.scheduler, "save_state", None)
        return save() if save is not None else {}

    def set_state(self, state: dict[str, Any]) -> None:
        load = getattr(self.scheduler, "load_state", None)
        if state and load is not None:
            load(state)

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.scheduler.snapshot_due()  # one that fell due too soon after the last

    def on_step_end(self, iteration, trials, **info) -> None:
        tracker = budget.active()
        if tracker is not None and tracker.spent and not tracker.interrupted and \
                not any(t.status == "RUNNING" for t in trials):
            # Spent, and every trial is at an epoch boundary: end the fit as Ray's SIGUSR1
            # does (its handler saves the experiment state; unfinished trials stay resumable).
            tracker.interrupted = True
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        if hasattr(self.scheduler, "checkpoint_registered"):  # absent in schedulers pickled by older sweeps
            self.scheduler.checkpoint_registered()
