"""What every tune-hand scheduler adds to Ray's: `SnapshotOnProgress`, a mixin placed FIRST in
each scheduler's bases (`class ResumableX(SnapshotOnProgress, RaySchedulerX)`), so that its
hooks (snapshots soon after progress, moved-experiment paths, the budget) wrap Ray's decisions.

A scheduler whose state must survive a resume also has `save_state() -> dict` and
`load_state(dict)`; `AshaStateCallback` (state.py) carries that dict in Ray's callback state.
"""

from __future__ import annotations

import copy
import time

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from .. import budget


class SnapshotOnProgress:
    """What every tune-hand scheduler adds to Ray's (a mixin before the Ray class):

    - Snapshots soon after progress. Ray snapshots the experiment (trial states, searcher,
      callbacks) at most every 10 s; a driver killed in between would, on resume, rerun trials
      that had already ended and rerun epochs whose checkpoints exist. So a stop decision, a
      finished trial, a result, or a checkpoint Ray has just registered (one controller step
      after its result) makes a snapshot due, and a due snapshot is forced at the end of the
      controller's step once the last forced one is `min_snapshot_s` old: all that happened in
      between share one snapshot. The window in which a killed driver loses progress is thus
      about `min_snapshot_s`, and a sweep of many short trials pays for at most one snapshot
      per `min_snapshot_s` (benchmarks/bench_driver.py: forcing one per trial end cost 30 ms
      per result at 256 trials). `AshaStateCallback.on_step_begin` forces a snapshot that fell
      due while the last one was too recent.
    - New trials of a moved experiment live where it is now. Ray points the trials it restores
      at the experiment's new path, but trials the restored searcher creates afterwards take
      the path pickled with it (the old one): their first report then fails ("Unable to set up
      cluster storage"), or writes into the old directory if it still exists.
    """

    min_snapshot_s: float = 1.0
    _last_forced: float = 0.0
    _due = None  # the controller whose snapshot is due; never pickled
    _controller = None  # the last controller seen (for snapshots due from callbacks); never pickled

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self._controller = tune_controller
        controller = getattr(tune_controller, "_tune_controller", tune_controller)  # it reaches us wrapped
        here = getattr(controller, "_storage", None)
        storage = getattr(trial, "storage", None)
        if here is not None and storage is not None and (storage.storage_fs_path, storage.experiment_dir_name) != (
                here.storage_fs_path, here.experiment_dir_name):
            moved = copy.copy(storage)
            moved.storage_filesystem = here.storage_filesystem
            moved.storage_fs_path = here.storage_fs_path
            moved.experiment_dir_name = here.experiment_dir_name
            trial.set_storage(moved)  # as Ray does for the trials it restores (TuneController._restore_trials)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        self.snapshot_due(tune_controller)
        tracker = budget.active()
        if tracker is not None:
            tracker.add(result)
            if tracker.spent and action == TrialScheduler.CONTINUE:
                # The budget ends the trial at this epoch boundary (budget.py): paused with its
                # checkpoint where FIFO-style scheduling resumes it, else stopped.
                fifo_style = type(self).choose_trial_to_run is SnapshotOnProgress.choose_trial_to_run and \
                    super().choose_trial_to_run.__func__ is FIFOScheduler.choose_trial_to_run
                action = TrialScheduler.PAUSE if fifo_style else TrialScheduler.STOP
        return action

    def choose_trial_to_run(self, tune_controller):
        tracker = budget.active()
        if tracker is not None and tracker.spent:
            return None  # a spent budget starts nothing (budget.py)
        return super().choose_trial_to_run(tune_controller)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self.snapshot_due(tune_controller)

    def snapshot_due(self, tune_controller=None) -> None:
        """Mark a snapshot due (when given the controller) and force it if the last is old enough."""
        if tune_controller is not None:
            self._due = self._controller = tune_controller
        if self._due is None or time.monotonic() - self._last_forced < self.min_snapshot_s:
            return
        # Ray's own trigger (what CheckpointConfig(num_to_keep) uses): the controller saves the
        # experiment at the end of this step. The controller reaches schedulers wrapped.
        controller = getattr(self._due, "_tune_controller", self._due)
        manager = getattr(controller, "_checkpoint_manager", None)
        if manager is not None and hasattr(manager, "_should_force_sync_up"):
            manager._should_force_sync_up = True
        self._last_forced = time.monotonic()
        self._due = None

    def checkpoint_registered(self) -> None:
        """A trial's checkpoint was just registered: the next snapshot must name it."""
        self.snapshot_due(self._controller)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_last_forced": 0.0, "_due": None, "_controller": None}
