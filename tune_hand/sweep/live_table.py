"""The live table of a running sweep: a line per trial that ends, the trials table now and then.

    RunConfig(callbacks=[LiveTable(header), ...])

A Ray Tune callback (hence Ray); what it prints is `tune-hand status`'s format, from
`tune_hand.sweep.results`. Pickled by reference in Ray's tuner.pkl: sweeps written before this
package name it `tune_hand.search_alg.LiveTable`, which re-exports it.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback

from ..objective import Objective
from . import budget
from .results import format_status, live_state


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

    @property
    def objective(self) -> Objective:
        # Derived, not stored: the pickled state of sweeps written earlier holds only the header.
        return Objective.single(self.header["metric"], self.header["mode"])

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
        if self.objective.scored(result):
            value, best = result[self.header["metric"]], self._best.get(trial.trial_id)
            if best is None or self.objective.better(value, best[0]):
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
        state = live_state(ray_state, last, self.header["max_epochs"])
        best = self._best.get(trial.trial_id)
        scored = f"best {self.header['metric']} {best[0]:.2f} (epoch {best[1]})" if best else "no score"
        done = sum(t.trial_id in self._ended for t in trials)
        print(f"tune-hand: trial {trial.trial_id} {state} after {int(last.get('epoch', 0) or 0)} epochs, {scored}; "
              f"{done}/{self.header['num_samples']} trials ended", file=self.stream or sys.stderr, flush=True)

    def print(self, trials) -> None:
        self._last_print = time.monotonic()
        rows = []
        for t in trials:
            last = self._last.get(t.trial_id) or t.last_result or {}
            best = self._best.get(t.trial_id)
            rows.append({
                "trial_id": t.trial_id,
                "state": live_state(t.status, last, self.header["max_epochs"]),
                "epochs": int(last.get("epoch", 0) or 0),
                "best_metric": best[0] if best else None, "best_epoch": best[1] if best else None,
                "config": dict(t.config),
            })
        signature = [(r["trial_id"], r["state"], r["epochs"]) for r in rows]
        if signature == self._last_signature:
            return
        self._last_signature = signature
        best = self.objective.best_of(rows, lambda r: r["best_metric"])
        status = {**self.header, "trials": rows, "best": best}
        tracker = budget.active()
        if tracker is not None:  # this driver's spend so far (with what the sweep had spent before)
            status["cost"] = {"resource_hours": tracker.spent_hours, "budget_hours": tracker.budget_hours,
                              "unit": tracker.unit}
        print(format_status(status), file=self.stream or sys.stderr, flush=True)

