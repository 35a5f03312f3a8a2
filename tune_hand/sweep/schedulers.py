"""ASHA that survives a resume: Ray's ASHAScheduler with rung records that are saved and put back.

    scheduler = ResumableASHA(max_t=4, grace_period=1, reduction_factor=2)
    RunConfig(callbacks=[AshaStateCallback(scheduler), ...])
    scheduler, callbacks = build_scheduler(spec)   # ResumableASHA or ResumableFIFO, and its callback

Ray never saves a scheduler (`TrialScheduler.save` exists but nothing calls it), so a resumed
ASHA starts with empty rungs and judges the next trials against nothing. Callbacks, however,
are saved with every experiment checkpoint (`callback-states-*.pkl`, beside the searcher's
state and written at the same moment as `experiment_state-*.json`), so `AshaStateCallback`
carries the rung records there and puts them back on restore. The scheduler and the callback
are pickled together in Ray's `tuner.pkl`, so the restored callback still holds the restored
scheduler. Both class names are pickled by reference: sweeps written before this package
name them `tune_hand.search_alg.*`, which re-exports them.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from .spec import Spec


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
        return action

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


class ResumableASHA(SnapshotOnProgress, ASHAScheduler):
    """Ray's ASHAScheduler whose rung records can be read out and put back (`rungs`/`load_rungs`),
    with tune-hand's snapshots and moved-experiment paths (`SnapshotOnProgress`)."""

    def __init__(self, *args, min_snapshot_s: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_snapshot_s = min_snapshot_s
        self._last_forced = 0.0

    def rungs(self) -> list[list[tuple[float, dict[str, float]]]]:
        """Per bracket: [(milestone, {trial_id: reward recorded at that milestone}), ...]."""
        return [[(milestone, dict(recorded)) for milestone, recorded in b._rungs] for b in self._brackets]

    def load_rungs(self, saved: list[list[tuple[float, dict[str, float]]]], num_stopped: int = 0) -> None:
        """Put saved records back, in place: restored trials already point at these brackets."""
        if len(saved) != len(self._brackets) or any(
                [m for m, _ in b._rungs] != [m for m, _ in s] for b, s in zip(self._brackets, saved)):
            raise ValueError("saved ASHA rungs do not match this scheduler's milestones "
                             f"({[[m for m, _ in s] for s in saved]} vs {[[m for m, _ in b._rungs] for b in self._brackets]})")
        for bracket, rungs in zip(self._brackets, saved):
            for (_, recorded), (_, values) in zip(bracket._rungs, rungs):
                recorded.clear()
                recorded.update(values)
        self._num_stopped = num_stopped

    @property
    def num_stopped(self) -> int:
        return self._num_stopped


class ResumableFIFO(SnapshotOnProgress, FIFOScheduler):
    """Ray's FIFOScheduler (no early stopping) with tune-hand's snapshots and moved-experiment paths."""

    def __init__(self, *args, min_snapshot_s: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_snapshot_s = min_snapshot_s


class AshaStateCallback(Callback):
    """Saves the scheduler's rung records with each experiment checkpoint and restores them on
    resume; forces the snapshots the scheduler has marked due (see `SnapshotOnProgress`)."""

    def __init__(self, scheduler: SnapshotOnProgress):
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any]:
        if not hasattr(self.scheduler, "rungs"):
            return {}
        return {"asha_rungs": self.scheduler.rungs(), "num_stopped": self.scheduler.num_stopped}

    def set_state(self, state: dict[str, Any]) -> None:
        if "asha_rungs" in state:
            self.scheduler.load_rungs(state["asha_rungs"], state.get("num_stopped", 0))

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.scheduler.snapshot_due()  # one that fell due too soon after the last

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        if hasattr(self.scheduler, "checkpoint_registered"):  # absent in schedulers pickled by older sweeps
            self.scheduler.checkpoint_registered()


def build_scheduler(spec: Spec) -> tuple[Any, list[Any]]:
    """(the spec's trial scheduler, the callbacks it needs)."""
    if spec.scheduler.type == "fifo":
        scheduler = ResumableFIFO()
        return scheduler, [AshaStateCallback(scheduler)]
    scheduler = ResumableASHA(time_attr="training_iteration", max_t=spec.max_epochs,
                              grace_period=spec.scheduler.grace_period,
                              reduction_factor=spec.scheduler.reduction_factor)
    # Pickled together with the scheduler in Ray's tuner.pkl, so a restored sweep's callback
    # puts the rung records back into the restored scheduler.
    return scheduler, [AshaStateCallback(scheduler)]
