"""The Ray Tune parts of a sweep that close Ray 2.60's gaps: ASHA that survives a resume,
an Optuna searcher that tells Optuna what really happened to a trial, and a live table.

    scheduler = ResumableASHA(max_t=4, grace_period=1, reduction_factor=2)
    searcher = TrialStateOptunaSearch(space=..., metric=..., mode=..., max_epochs=4)
    RunConfig(callbacks=[AshaStateCallback(scheduler), LiveTable(...)])

Ray never saves a scheduler (`TrialScheduler.save` exists but nothing calls it), so a resumed
ASHA starts with empty rungs and judges the next trials against nothing. Callbacks, however,
are saved with every experiment checkpoint (`callback-states-*.pkl`, beside the searcher's
state and written at the same moment as `experiment_state-*.json`), so `AshaStateCallback`
carries the rung records there and puts them back on restore. The scheduler and the callback
are pickled together in Ray's `tuner.pkl`, so the restored callback still holds the restored
scheduler.

Ray's OptunaSearch tells Optuna COMPLETE with the last value for every trial that ended,
including those ASHA stopped and those that diverged. `TrialStateOptunaSearch` tells:
    finished the budget  -> COMPLETE with the trial's best value (the one `best` exports)
    stopped by ASHA      -> PRUNED (its per-epoch values are already reported)
    diverged             -> PRUNED (the sentinel value marks its region as bad for TPE)
    error                -> FAIL
`benchmarks/bench_tpe_tell.py` measured these choices against Ray's default on a simulated
ASHA sweep; see its results in the README.

This module imports ray; only `tune_hand.sweep`'s functions that start a sweep import it.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

# What to tell Optuna about a trial ASHA stopped and about a diverged one; see the module doc.
STOPPED_AS = "pruned"
DIVERGED_AS = "pruned"


# -- ASHA with rung records that survive a resume ---------------------------------------------
class ResumableASHA(ASHAScheduler):
    """Ray's ASHAScheduler whose rung records can be read out and put back (`rungs`/`load_rungs`),
    and which asks Ray for an experiment snapshot soon after a trial ends or checkpoints.

    Ray snapshots the experiment (trial states, searcher, callbacks) at most every 10 s; a
    driver killed in between would, on resume, rerun trials that had already ended and rerun
    epochs whose checkpoints exist. So a stop decision, a finished trial, or a result (each
    carries a checkpoint) makes a snapshot due, and a due snapshot is forced at the end of the
    controller's step once the last forced one is `min_snapshot_s` old: all that ended in
    between share one snapshot. The window in which a killed driver loses an ending is thus
    about `min_snapshot_s`, and a sweep of many short trials pays for at most one snapshot per
    `min_snapshot_s` (benchmarks/bench_driver.py: forcing one per trial end cost 30 ms per result
    at 256 trials). `AshaStateCallback.on_step_begin` forces a snapshot that fell due while the
    last one was too recent.
    """

    def __init__(self, *args, min_snapshot_s: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_snapshot_s = min_snapshot_s
        self._last_forced = 0.0
        self._due = None  # the controller whose snapshot is due; never pickled

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
            self._due = tune_controller
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

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_last_forced": 0.0, "_due": None}

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


class AshaStateCallback(Callback):
    """Saves the scheduler's rung records with each experiment checkpoint; restores them on resume."""

    def __init__(self, scheduler: ResumableASHA):
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any]:
        return {"asha_rungs": self.scheduler.rungs(), "num_stopped": self.scheduler.num_stopped}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_rungs(state["asha_rungs"], state.get("num_stopped", 0))

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.scheduler.snapshot_due()  # one that fell due too soon after the last


# -- Optuna told the truth about each trial ----------------------------------------------------
class TrialStateOptunaSearch(OptunaSearch):
    """OptunaSearch that tells finished, ASHA-stopped, diverged and errored trials apart."""

    def __init__(self, *args, max_epochs: int, time_attr: str = "training_iteration", **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._time_attr = time_attr
        self._best_values: dict[str, float] = {}
        self._steps: dict[str, set[int]] = {}  # epochs reported to Optuna, per trial

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        step = result.get(self._time_attr)
        if step not in self._steps.get(trial_id, ()):  # a resumed trial may report an epoch again
            super().on_trial_result(trial_id, result)
            self._steps.setdefault(trial_id, set()).add(step)
        value = result.get(self.metric)
        if _finite(value) and not result.get("diverged"):
            best = self._best_values.get(trial_id)
            if best is None or (value < best if self.mode == "min" else value > best):
                self._best_values[trial_id] = float(value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        # The result that made ASHA stop a trial (and a trial's final one) reaches the searcher only
        # here, not through on_trial_result: record it as the epoch's value first.
        step = result.get(self._time_attr)
        if step is not None and step not in self._steps.get(trial_id, ()) and _finite(result.get(self.metric)):
            self.on_trial_result(trial_id, result)
        outcome = trial_outcome(result, error, self._max_epochs, self._time_attr)
        best = self._best_values.get(trial_id)
        ot_trial.set_user_attr("tune_hand_state", outcome)
        state, value = TrialState.FAIL, None
        if outcome == "finished" and best is not None:
            state, value = TrialState.COMPLETE, best
        elif outcome == "stopped early":
            state, value = ((TrialState.COMPLETE, best) if STOPPED_AS == "complete" and best is not None
                            else (TrialState.PRUNED, None))
        elif outcome == "diverged" and DIVERGED_AS == "pruned":
            state = TrialState.PRUNED
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)
        self._best_values.pop(trial_id, None)
        self._steps.pop(trial_id, None)


def trial_outcome(result: dict, error: bool, max_epochs: int, time_attr: str = "training_iteration") -> str:
    """finished | stopped early | diverged | error, from a trial's last result."""
    if error:
        return "error"
    if result.get("diverged"):
        return "diverged"
    if int(result.get(time_attr, 0) or 0) >= max_epochs:
        return "finished"
    return "stopped early" if result else "error"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- the live table ----------------------------------------------------------------------------
class LiveTable(Callback):
    """Progress on stderr: one line per trial that ends, and the trials table (`tune-hand
    status`'s format) at most every `every` seconds while trials run, and at the end.

    A table per trial end grew with the trials (8 MB of stderr for a 256-trial sweep in
    benchmarks/bench_driver.py); a line per ending stays readable in a batch job's log."""

    def __init__(self, header: dict[str, Any], every: float = 30.0, stream=None):
        self.header = header  # experiment, spec_name, spec_hash, metric, mode, max_epochs, num_samples, space
        self.every = every
        self.stream = stream
        self._best: dict[str, tuple[float, int]] = {}
        self._last_print = time.monotonic()  # the first table after `every` seconds
        self._last_signature: list = []
        self._last: dict[str, dict] = {}
        self._ended: set[str] = set()

    # Saved with every experiment snapshot and restored by `resume` (Ray keeps callback state
    # beside the searcher's): without it a resumed sweep's table shows no best for the trials
    # that ran before the interruption, and counts their endings again.
    def get_state(self) -> dict[str, Any]:
        return {"best": dict(self._best), "ended": sorted(self._ended)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._best = {k: (float(v), int(e)) for k, (v, e) in state.get("best", {}).items()}
        self._ended = set(state.get("ended", ()))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Ray calls callbacks before it updates trial.last_result: keep the newest result here.
        self._last[trial.trial_id] = result
        value = result.get(self.header["metric"])
        if _finite(value) and not result.get("diverged"):
            best = self._best.get(trial.trial_id)
            sign = 1 if self.header["mode"] == "min" else -1
            if best is None or sign * value < sign * best[0]:
                self._best[trial.trial_id] = (float(value), int(result.get("epoch", 0)))
        self._maybe_print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended_line(trials, trial, "TERMINATED")
        self._maybe_print(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended_line(trials, trial, "ERROR")
        self._maybe_print(trials)

    def on_experiment_end(self, trials, **info):
        self.print(trials)

    def _maybe_print(self, trials) -> None:
        if time.monotonic() - self._last_print >= self.every:
            self.print(trials)

    def _ended_line(self, trials, trial, ray_state: str) -> None:
        self._ended.add(trial.trial_id)
        last = self._last.get(trial.trial_id) or trial.last_result or {}
        state = live_state_of(ray_state, last, self.header["max_epochs"])
        best = self._best.get(trial.trial_id)
        scored = f"best {self.header['metric']} {best[0]:.2f} (epoch {best[1]})" if best else "no score"
        done = sum(t.trial_id in self._ended for t in trials)
        print(f"tune-hand: trial {trial.trial_id} {state} after {int(last.get('epoch', 0) or 0)} epochs, {scored}; "
              f"{done}/{self.header['num_samples']} trials ended", file=self.stream or sys.stderr, flush=True)

    def print(self, trials) -> None:
        from .sweep_cli import format_status

        self._last_print = time.monotonic()
        rows = []
        for t in trials:
            last = self._last.get(t.trial_id) or t.last_result or {}
            best = self._best.get(t.trial_id)
            rows.append({
                "trial_id": t.trial_id,
                "state": live_state_of(t.status, last, self.header["max_epochs"]),
                "epochs": int(last.get("epoch", 0) or 0),
                "best_metric": best[0] if best else None, "best_epoch": best[1] if best else None,
                "config": dict(t.config),
            })
        signature = [(r["trial_id"], r["state"], r["epochs"]) for r in rows]
        if signature == self._last_signature:
            return
        self._last_signature = signature
        scored = [r for r in rows if r["best_metric"] is not None]
        sign = 1 if self.header["mode"] == "min" else -1
        best = min(scored, key=lambda r: sign * r["best_metric"]) if scored else None
        status = {**self.header, "trials": rows, "best": best}
        print(format_status(status), file=self.stream or sys.stderr, flush=True)


def live_state_of(ray_state: str | None, last: dict[str, Any], max_epochs: int) -> str:
    from .sweep import live_state

    return live_state(ray_state, last, max_epochs)
