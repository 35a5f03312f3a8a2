"""The median stopping rule (Golovin et al. 2017, Vizier): Ray's MedianStoppingRule, resumable.

    ResumableMedianStopping(time_attr="training_iteration", grace_period=1)

A trial is stopped at epoch t (>= grace_period) when its best value so far is worse than the
median of the other trials' running means up to t, once at least 3 trials (Ray's
`min_samples_required`) reached t. Ray keeps every trial's results in a dict keyed by the Trial
object and never saves it; a resumed rule would judge the next trials against nothing (or
against only the trials still running). `save_state` keeps, per trial id, the (epoch, value)
pairs the rule uses, and the restored trials get them back as Ray re-adds them.

Two changes to Ray's behaviour, on purpose:
- An epoch reported again (a trial resumed from a checkpoint older than its last result, or
  Ray's repeat of a trial's last result when it ends) replaces the recorded one, so each epoch
  counts once in the running means, resumed or not.
- A trial never yields to pending trials when too few others have reached its epoch (Ray
  pauses it then): a paused trial restarts in a new process from its checkpoint, which costs
  more than it buys when every trial has the same epoch budget.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import MedianStoppingRule, TrialScheduler

from ._base import SnapshotOnProgress


class ResumableMedianStopping(SnapshotOnProgress, MedianStoppingRule):
    """Ray's MedianStoppingRule whose records survive a resume (`save_state`/`load_state`)."""

    def __init__(self, *args, min_snapshot_s: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_snapshot_s = min_snapshot_s
        # Ray's defaultdict(lambda: -inf) of pause times does not pickle, and nothing reads it
        # once trials never yield (below).
        self._last_pause = {}
        self._restored: dict[str, dict[str, Any]] = {}  # trial id -> saved records, until it is re-added

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        saved = self._restored.pop(trial.trial_id, None)
        if saved is not None:
            self._put_back(trial, saved)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._forget_from(trial, result)
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._forget_from(trial, result)  # Ray appends the last result a second time here
        super().on_trial_complete(tune_controller, trial, result)

    def _forget_from(self, trial, result: dict | None) -> None:
        """Drop the records of `result`'s epoch and later: an epoch reported again replaces them."""
        step = (result or {}).get(self._time_attr)
        if step is not None and trial in self._results:
            self._results[trial] = [r for r in self._results[trial] if r.get(self._time_attr, step) < step]

    def _on_insufficient_samples(self, tune_controller, trial, time: float) -> str:
        return TrialScheduler.CONTINUE  # never yield (see the module docstring)

    # -- state ---------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        def records(results: list[dict]) -> list[tuple[float, float]]:
            return [(r[self._time_attr], r[self._metric]) for r in results
                    if r and self._time_attr in r and self._metric in r]

        state = {t.trial_id: {"results": records(results), "stopped": t in self._stopped_trials}
                 for t, results in self._results.items()}
        for trial_id, saved in self._restored.items():  # restored, not re-added yet
            state.setdefault(trial_id, saved)
        return {"median": state}

    def load_state(self, state: dict[str, Any]) -> None:
        saved = dict(state.get("median", {}))
        for trial in list(self._results):  # trials added before the state came back
            if trial.trial_id in saved:
                self._put_back(trial, saved.pop(trial.trial_id))
        self._restored = saved

    def _put_back(self, trial, saved: dict[str, Any]) -> None:
        self._results[trial] = [{self._time_attr: t, self._metric: v} for t, v in saved["results"]]
        if saved["stopped"]:
            self._stopped_trials.add(trial)
