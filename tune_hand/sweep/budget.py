"""A sweep's cost in resource-hours, and the budget that stops it.

    cost = sweep_cost(trials, budget_hours=4.0)   # {resource_hours, budget_hours, gpu_hours, cpu_hours, wall_hours}
    with budget_guard(BudgetTracker(4.0, spent_hours=cost["resource_hours"])):
        tuner.fit()                                # the schedulers consult the tracker

Resource-hours are trial wall time x the resources the trial held: GPU-hours when the trials
hold GPUs, else CPU-hours. A trial's wall time is the sum of its reported epochs'
`time_this_iter_s` (Ray's own per-report clock, the first one including the trial's set-up),
every report counted, also an epoch a resumed trial ran twice. Not counted: the part of an
epoch that a kill interrupted (it never reported). `wall_hours` is the time during which at
least one trial ran (the union of the reported epochs' intervals).

When the budget is spent (`BudgetTracker.spent`), every tune-hand scheduler (the
`SnapshotOnProgress` mixin) starts no new trial, and ends each running trial at its next epoch
boundary: paused with its checkpoint where Ray's FIFO-style scheduling would resume it
(asha, fifo, median), else stopped. Once no trial runs, the driver ends the fit the way
Ray's own SIGUSR1 does (the experiment state is saved, unfinished trials stay resumable),
and `resume` with a larger `--budget-hours` continues them. The tracker is set by the
driver for the length of one fit (`budget_guard`), not pickled with the scheduler: a
restored sweep takes the budget of its `tune_hand_sweep.json`, which `--budget-hours` sets.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError

BUDGET_KEY = "budget_hours"


def check_budget(hours: float | None, what: str = "--budget-hours") -> None:
    """A budget is a positive, finite number of hours (or none)."""
    if hours is not None and not (isinstance(hours, (int, float)) and math.isfinite(hours) and hours > 0):
        raise ConfigError(f"{what} {hours!r}: a budget is a positive number of resource-hours, e.g. 4 or 0.5")


def report_lines(trial_dir: Path) -> list[dict[str, Any]]:
    """Every report a trial made, reruns included (result.json, one JSON object per line)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # a torn last line of a killed trial
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def held(rows: list[dict[str, Any]], resources: dict[str, float]) -> dict[str, float]:
    """{cpu, gpu} a trial held: the spec's (effective) resources; GPUs only if it saw some."""
    gpu = float(resources.get("gpu", 0) or 0)
    if gpu and rows and not any(r.get("cuda_visible_devices") for r in rows):
        gpu = 0.0  # a GPU spec run on CPUs (a local Ray without GPUs)
    return {"cpu": float(resources.get("cpu", 1) or 0), "gpu": gpu}


def trial_seconds(rows: list[dict[str, Any]]) -> float:
    return sum(float(r.get("time_this_iter_s") or 0.0) for r in rows)


def trial_cost(rows: list[dict[str, Any]], resources: dict[str, float]) -> dict[str, float]:
    """{seconds, cpu_hours, gpu_hours} of one trial's reports."""
    h = held(rows, resources)
    hours = trial_seconds(rows) / 3600.0
    return {"seconds": hours * 3600.0, "cpu_hours": hours * h["cpu"], "gpu_hours": hours * h["gpu"]}


def resource_hours(cpu_hours: float, gpu_hours: float) -> float:
    """GPU-hours when the trials held GPUs, else CPU-hours."""
    return gpu_hours if gpu_hours > 0 else cpu_hours


def wall_hours(rows_by_trial: list[list[dict[str, Any]]]) -> float:
    """Hours during which at least one trial ran: the union of [end - duration, end] per report."""
    spans = sorted((float(r["timestamp"]) - float(r.get("time_this_iter_s") or 0.0), float(r["timestamp"]))
                   for rows in rows_by_trial for r in rows if isinstance(r.get("timestamp"), (int, float)))
    total, start, end = 0.0, None, None
    for a, b in spans:
        if end is None or a > end:
            if end is not None:
                total += end - start
            start, end = a, b
        else:
            end = max(end, b)
    if end is not None:
        total += end - start
    return total / 3600.0


def sweep_cost(costs: list[dict[str, float]], walls: list[list[dict[str, Any]]],
               budget_hours: float | None) -> dict[str, Any]:
    """The `cost` block of `status --json`, from every trial's `trial_cost` and report rows."""
    cpu = sum(c["cpu_hours"] for c in costs)
    gpu = sum(c["gpu_hours"] for c in costs)
    return {"resource_hours": resource_hours(cpu, gpu), "budget_hours": budget_hours, "gpu_hours": gpu,
            "cpu_hours": cpu, "wall_hours": wall_hours(walls), "unit": "gpu" if gpu > 0 else "cpu"}


def format_hours(hours: float) -> str:
    return f"{hours:.3g} h" if hours >= 0.1 else f"{hours * 60:.3g} min"


class BudgetTracker:
    """Resource-hours spent so far in one driver, against the budget (None: unlimited)."""

    def __init__(self, budget_hours: float | None, spent_hours: float = 0.0, resources: dict[str, float] | None = None,
                 unit: str | None = None):
        self.budget_hours = budget_hours
        self.spent_hours = spent_hours
        self.resources = resources or {"cpu": 1, "gpu": 0}
        self.unit = unit or ("gpu" if self.resources.get("gpu") else "cpu")
        self.interrupted = False

    @property
    def spent(self) -> bool:
        return self.budget_hours is not None and self.spent_hours >= self.budget_hours

    def add(self, result: dict[str, Any]) -> None:
        h = held([result], self.resources)
        self.spent_hours += float(result.get("time_this_iter_s") or 0.0) / 3600.0 * (
            h["gpu"] if self.unit == "gpu" else h["cpu"])

    def message(self, exp: str) -> str:
        return (f"tune-hand: the budget of {self.budget_hours:g} {self.unit.upper()}-hours is spent "
                f"({self.spent_hours:.4g} used); raise it with `tune-hand resume {exp} --budget-hours H`")


_ACTIVE: BudgetTracker | None = None


def active() -> BudgetTracker | None:
    """The tracker of the fit running in this process, if it has a budget."""
    return _ACTIVE


@contextlib.contextmanager
def budget_guard(tracker: BudgetTracker | None) -> Iterator[BudgetTracker | None]:
    """Make `tracker` the one the schedulers consult, for the length of a fit."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, tracker
    try:
        yield tracker
    finally:
        _ACTIVE = previous
