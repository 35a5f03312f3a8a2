"""Search efficiency on recorded learning curves (issue #14): every search method replayed against
one table of real per-epoch validation curves, on a simulated clock, over many seeds.

    python benchmarks/bench_search_efficiency.py --seeds 20 --json benchmarks/results/search_efficiency.json \\
        | tee benchmarks/results/search_efficiency.log
    python benchmarks/bench_search_efficiency.py --seeds 2 --methods random+fifo tpe+asha --json /tmp/se.json

The table (`--curves`, benchmarks/results/curves.json, from benchmarks/record_curves.py): the
`quick` spec's configurations trained by the core Trainer on one synthetic dataset, per epoch
the validation pa_mpjpe_mm / rr_mpjpe_mm and the epoch's seconds; some configurations twice
(train.seed 0 and 1). Live CPU sweeps (this file's previous version) cost ~15 min a seed, and
three seeds could not tell methods apart; a replay costs well under a second a seed.

The replay uses the REAL scheduler and searcher, `build_scheduler(spec)` and
`build_searcher(spec, max_concurrent=W)` (Ray's ASHA / Hyperband / median / PBT / FIFO under
tune-hand's Resumable* classes; Optuna's samplers inside our TrialStateOptunaSearch behind Ray's
ConcurrencyLimiter), driven by `Replay`, a small event loop that plays Ray's TuneController:
    - while fewer than W trials run: ask the searcher for a trial when none is pending
      (`suggest(trial_id)`; the limiter answers None while W trials are live), then
      `scheduler.choose_trial_to_run(controller)` starts one (PENDING or PAUSED);
    - a running trial reports epoch e after the recorded epoch's seconds; the result goes to
      `scheduler.on_trial_result` and, unless it says STOP, to `searcher.on_trial_result` (Ray's
      order, TuneController._process_trial_result); STOP or the last epoch ends the trial with
      `scheduler.on_trial_complete` and `searcher.on_trial_complete(trial_id, result)`; PAUSE
      frees the worker until the scheduler chooses the trial again.
A suggested config is mapped to the nearest recorded one in the normalised space (categorical
values must match, the design crosses them all; numeric ones by distance in [0, 1], log scale
for loguniform). For a config recorded with two seeds, each replayed trial takes one seed's
curve, drawn from the replay's seeded generator: the replay sees run-to-run noise. PBT's exploit
(the controller's `pause_trial`, `_schedule_trial_save` and the donor checkpoint the scheduler
hands the trial) is replayed by switching curves: the trial continues from the donor's epoch
along the new config's recorded curve (nearest config, a seed drawn again). An approximation: the
table holds no curves that change config midway, and this one credits the inherited weights only
with their epoch count. A graft (the donor's value plus the new curve's change) was tried and
dropped: it makes PBT copy evaluation-noise dips and keep them, ending ~1 mm below the table's
best seed-mean value in a trial run, a gain no trained model showed.
PBT's per-step policy log (Ray's `log_config`) is off: it writes files beside trials.
Every source of randomness is seeded by the replay seed (the spec seed drives the sampler and
Hyperband's bracket draws; Python's `random`, which PBT uses, is seeded before each replay), so
a seed replays identically.

Why a small loop and not Syne Tune's simulator (syne_tune/blackbox_repository/
simulated_tabular_backend.py, the design this follows: a tabular blackbox, a simulated clock,
W workers, epochs reported after their recorded time): Syne Tune is not installed here and its
backend drives Syne Tune's own schedulers, not Ray's; the question is how OUR schedulers and
samplers (the code a sweep runs) behave, so the loop drives exactly those, through the few
controller and Trial members they use (`FakeController`, `FakeTrial`).

The budget and the measures. Budget B = `--budget-trials` K full trials of random+FIFO's
trial-epochs (K x E, E = the table's epochs), the same for every method and seed: a replay ends
when B trial-epochs have been reported (trials still running are cut there). Each method's best
so far (the searched metric over every reported epoch of every trial, Ray's scope="all"):
    final_best: at B; final_regret_mm = final_best - the table's best mean value (the lowest
        value over configs and epochs of the curve averaged over the config's recorded seeds;
        a lucky seed can go below it, so the regret can be negative);
    cost_ratio: the trial-epochs a method needs to reach random+FIFO's final best for the same
        seed, divided by B. Each method runs on to `--cap` x B to measure it; never reached by
        then counts as `--cap`. For random+FIFO itself it is where its best-so-far first hit its
        own final best (<= 1; exactly 1 when that came in its last epoch).
Also per method: the ratio "within the noise" (to reach the target + the table's median seed-0
vs seed-1 difference of one config's best value), the wall-clock version of the ratio (simulated seconds on W workers, against
random+FIFO's seconds to spend B), and the same two measures for rr_mpjpe_mm: the best rr seen
during the same search (which ranks by --metric; `--metric rr_mpjpe_mm` replays searches on rr).
Goal (issue #6/#14): cost ratio <= 1/3.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tune_hand.sweep import load_spec
from tune_hand.sweep.parse import parse_spec

CURVES = Path(__file__).resolve().parent / "results" / "curves.json"

# name -> (sampler, scheduler); the scheduler's max_epochs is the table's epochs.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "random+fifo": ("random", {"type": "fifo"}),
    "random+asha": ("random", {"type": "asha", "grace_period": 1, "reduction_factor": 2}),
    "tpe+asha": ("tpe", {"type": "asha", "grace_period": 1, "reduction_factor": 2}),
    "tpe+hyperband": ("tpe", {"type": "hyperband", "grace_period": 1, "reduction_factor": 2}),  # BOHB-like
    "gp+asha": ("gp", {"type": "asha", "grace_period": 1, "reduction_factor": 2}),
    "qmc+asha": ("qmc", {"type": "asha", "grace_period": 1, "reduction_factor": 2}),
    "tpe+median": ("tpe", {"type": "median", "grace_period": 1}),
    "random+pbt": ("random", {"type": "pbt"}),
    "tpe+fifo": ("tpe", {"type": "fifo"}),
}
BASELINE = "random+fifo"

PENDING, RUNNING, PAUSED, TERMINATED = "PENDING", "RUNNING", "PAUSED", "TERMINATED"


# -- the table ---------------------------------------------------------------------------------
class Table:
    """Recorded curves: nearest-config lookup and per-seed curves."""

    def __init__(self, data: dict):
        self.data = data
        self.space = data["space"]
        self.configs = [c for c in data["configs"] if c["seeds"]]
        self.epochs = min(len(s["epochs"]) for c in self.configs for s in c["seeds"].values())
        self.keys = sorted(self.space)
        self._points = np.array([self._unit(c["params"]) for c in self.configs])

    def _unit(self, params: dict) -> list[float]:
        out = []
        for k in self.keys:
            p, x = self.space[k], params[k]
            if p["type"] == "categorical":
                out.append(10.0 * p["values"].index(x))  # a mismatch is farther than any numeric gap
            elif p["type"] == "loguniform":
                out.append((math.log(x) - math.log(p["low"])) / (math.log(p["high"]) - math.log(p["low"])))
            else:
                out.append((x - p["low"]) / (p["high"] - p["low"]))
        return out

    def nearest(self, config: dict) -> int:
        d = ((self._points - np.array(self._unit(config))) ** 2).sum(axis=1)
        return int(np.argmin(d))

    def curve(self, index: int, seed: str, metric: str) -> list[float]:
        rows = self.configs[index]["seeds"][seed]["epochs"][: self.epochs]
        return [math.inf if r[metric] is None else float(r[metric]) for r in rows]

    def seconds(self, index: int, seed: str) -> list[float]:
        return [float(r["seconds"]) for r in self.configs[index]["seeds"][seed]["epochs"][: self.epochs]]

    def replicate_noise(self, metric: str) -> dict:
        """Run-to-run noise of one config: |seed 0 - seed 1| of the best and of the last epoch."""
        best, last = [], []
        for i, c in enumerate(self.configs):
            if len(c["seeds"]) > 1:
                a, b = (self.curve(i, s, metric) for s in sorted(c["seeds"])[:2])
                best.append(abs(min(a) - min(b)))
                last.append(abs(a[-1] - b[-1]))
        med = lambda v: round(float(np.median(v)), 3) if v else None
        return {"configs": len(best), "best_abs_diff_median_mm": med(best), "last_abs_diff_median_mm": med(last)}

    def best_mean(self, metric: str) -> tuple[float, str, int]:
        """The lowest value of any config's seed-averaged curve: (value, config id, epoch)."""
        best = (math.inf, "", 0)
        for i, c in enumerate(self.configs):
            mean = np.mean([self.curve(i, s, metric) for s in c["seeds"]], axis=0)
            e = int(np.argmin(mean))
            if mean[e] < best[0]:
                best = (float(mean[e]), c["id"], e + 1)
        return best


# -- what Ray's schedulers see -----------------------------------------------------------------
class _Checkpoint:
    """What `_schedule_trial_save` hands PBT: the trial's curve and position at that epoch."""

    def __init__(self, trial: FakeTrial):
        self.trial_id, self.epoch, self.value, self.other = trial.trial_id, trial.epoch, trial.last_value, trial.last_other
        self.path = f"/sim/{trial.trial_id}/checkpoint_{trial.epoch:06d}"


class _Manager:
    def __init__(self):
        self.checkpoint_config = type("CheckpointConfig", (), {"num_to_keep": None})()
        self._latest_checkpoint_result = None
        self.best_checkpoint_results: list = []

    @property
    def latest_checkpoint_result(self):
        return self._latest_checkpoint_result


class _RunMetadata:
    def __init__(self):
        self.checkpoint_manager = _Manager()

    def invalidate_cache(self) -> None:
        pass


class FakeTrial:
    """The members of ray.tune.experiment.Trial that ASHA, median, PBT and FIFO use."""

    PENDING, RUNNING, PAUSED, TERMINATED, ERROR = PENDING, RUNNING, PAUSED, TERMINATED, "ERROR"

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config, self.status = trial_id, dict(config), PENDING
        self.last_result: dict = {}
        self.evaluated_params: dict = {}
        self.experiment_tag = trial_id
        self.run_metadata = _RunMetadata()
        self.temporary_state = type("TemporaryState", (), {"saving_to": None})()
        self.storage = None
        self.local_experiment_path = "/sim"
        self.epoch = 0
        self.curve: list[float] = []
        self.rr_curve: list[float] = []
        self.seconds: list[float] = []
        self.last_value = self.last_other = math.inf
        self.table_index = -1

    @property
    def checkpoint(self):
        return _Checkpoint(self)

    def is_finished(self) -> bool:
        return self.status in (TERMINATED, "ERROR")

    def set_config(self, config: dict) -> None:
        self.config = dict(config)

    def set_experiment_tag(self, tag: str) -> None:
        self.experiment_tag = tag

    def __repr__(self) -> str:
        return f"FakeTrial({self.trial_id})"


class FakeController:
    """The members of Ray's TuneController the schedulers call."""

    search_alg = None

    def __init__(self, replay: Replay):
        self._replay = replay

    def get_trials(self) -> list[FakeTrial]:
        return list(self._replay.trials)

    def get_live_trials(self) -> list[FakeTrial]:
        return [t for t in self._replay.trials if not t.is_finished()]

    def pause_trial(self, trial: FakeTrial, should_checkpoint: bool = True) -> None:
        self._replay.pause(trial)

    def _schedule_trial_save(self, trial: FakeTrial, result: dict | None = None) -> _Checkpoint:
        return _Checkpoint(trial)


# -- the replay --------------------------------------------------------------------------------
class Replay:
    """One search (one method, one seed) on the table, until `budget` trial-epochs are reported."""

    def __init__(self, table: Table, spec, workers: int, seed: int, budget: int, metric: str):
        from tune_hand.sweep.schedulers import build_scheduler
        from tune_hand.sweep.searcher import build_searcher

        self.table, self.spec, self.workers, self.budget, self.metric = table, spec, workers, budget, metric
        self.rng = np.random.default_rng(seed)
        random.seed(seed)  # PBT's choices use Python's global generator (schedulers/pbt.py)
        self.scheduler, _ = build_scheduler(spec)
        self.scheduler.set_search_properties(spec.metric, spec.mode)
        if hasattr(self.scheduler, "_log_config"):
            self.scheduler._log_config = False  # PBT's policy files (module docstring)
        self.searcher = build_searcher(spec, max_concurrent=workers)
        self.controller = FakeController(self)
        self.trials: list[FakeTrial] = []
        self.events: list[tuple[float, int, FakeTrial]] = []
        self.now, self.spent, self._seq = 0.0, 0, 0
        self.trace: list[tuple[int, float, float, float]] = []  # (trial-epochs, seconds, best metric, best other)
        self.best = self.best_other = math.inf
        self.other = "rr_mpjpe_mm" if metric == "pa_mpjpe_mm" else "pa_mpjpe_mm"

    # trials
    def _add_trial(self) -> bool:
        trial_id = f"{len(self.trials):05d}"
        config = self.searcher.suggest(trial_id)
        if config is None:
            return False
        trial = FakeTrial(trial_id, config)
        self._load_curve(trial, self.table.nearest(config))
        self.trials.append(trial)
        self.scheduler.on_trial_add(self.controller, trial)
        return True

    def _load_curve(self, trial: FakeTrial, index: int) -> None:
        seeds = sorted(self.table.configs[index]["seeds"])
        seed = seeds[int(self.rng.integers(len(seeds)))]
        trial.table_index = index
        trial.curve = self.table.curve(index, seed, self.metric)
        trial.rr_curve = self.table.curve(index, seed, self.other)
        trial.seconds = self.table.seconds(index, seed)

    def _start(self, trial: FakeTrial) -> None:
        saved = trial.run_metadata.checkpoint_manager._latest_checkpoint_result
        if saved is not None and isinstance(getattr(saved, "checkpoint", None), _Checkpoint):
            self._graft(trial, saved.checkpoint)  # PBT exploited a donor: continue from its checkpoint
            trial.run_metadata.checkpoint_manager._latest_checkpoint_result = None
        trial.status = RUNNING
        self._schedule(trial)

    def _graft(self, trial: FakeTrial, ckpt: _Checkpoint) -> None:
        """Continue from the donor's epoch along the (new) config's curve (module docstring)."""
        self._load_curve(trial, self.table.nearest(trial.config))
        trial.epoch = ckpt.epoch
        e = ckpt.epoch - 1
        if e >= 0:
            trial.last_value, trial.last_other = ckpt.value, ckpt.other

    def _schedule(self, trial: FakeTrial) -> None:
        self._seq += 1
        heapq.heappush(self.events, (self.now + trial.seconds[trial.epoch], self._seq, trial))

    def pause(self, trial: FakeTrial) -> None:
        if trial.status == RUNNING:
            self.events = [ev for ev in self.events if ev[2] is not trial]
            heapq.heapify(self.events)
        trial.status = PAUSED

    def _fill(self) -> None:
        while sum(t.status == RUNNING for t in self.trials) < self.workers:
            if not any(t.status == PENDING for t in self.trials):
                self._add_trial()
            trial = self.scheduler.choose_trial_to_run(self.controller)
            if trial is None:
                return
            self._start(trial)

    def _complete(self, trial: FakeTrial, result: dict) -> None:
        trial.status = TERMINATED
        self.scheduler.on_trial_complete(self.controller, trial, result)
        self.searcher.on_trial_complete(trial.trial_id, result=result)

    # the loop
    def run(self) -> Replay:
        from ray.tune.schedulers import TrialScheduler

        max_epochs = self.spec.max_epochs
        while self.spent < self.budget:
            self._fill()
            if not self.events:
                break
            self.now, _, trial = heapq.heappop(self.events)
            trial.epoch += 1
            e = trial.epoch - 1
            value, other = trial.curve[e], trial.rr_curve[e]
            trial.last_value, trial.last_other = value, other
            self.spent += 1
            self.best, self.best_other = min(self.best, value), min(self.best_other, other)
            self.trace.append((self.spent, self.now, self.best, self.best_other))
            result = {"training_iteration": trial.epoch, self.metric: value, self.other: other,
                      "time_total_s": float(sum(trial.seconds[: trial.epoch])), "trial_id": trial.trial_id,
                      "done": trial.epoch >= max_epochs}
            if not math.isfinite(value):
                result["diverged"] = True
            decision = self.scheduler.on_trial_result(self.controller, trial, result)
            if decision != TrialScheduler.STOP:
                self.searcher.on_trial_result(trial.trial_id, result)
            trial.last_result = result
            if decision == TrialScheduler.STOP or trial.epoch >= max_epochs or not math.isfinite(value):
                self._complete(trial, result)
            elif decision == TrialScheduler.PAUSE or trial.status == PAUSED:
                trial.status = PAUSED
            elif trial.status == RUNNING:
                self._schedule(trial)
        return self


# -- the measures ------------------------------------------------------------------------------
def first_reach(trace: list, target: float, column: int = 2) -> tuple[int, float] | None:
    """(trial-epochs, seconds) at which the best so far first reached `target`, or None."""
    for row in trace:
        if row[column] <= target + 1e-9:
            return row[0], row[1]
    return None


def best_at(trace: list, budget: int, column: int = 2) -> float:
    rows = [r[column] for r in trace if r[0] <= budget]
    return rows[-1] if rows else math.inf


def method_spec(base, name: str, seed: int, epochs: int, workers: int):
    sampler, scheduler = METHODS[name]
    raw = base.to_dict()
    raw["sampler"], raw["seed"], raw["max_concurrent_trials"] = sampler, seed, workers
    raw["scheduler"] = {**scheduler, "max_epochs": epochs}
    return parse_spec(raw, source=f"bench method {name}", default_name=name)


def available(base, name: str) -> str | None:
    """None when the installed tune_hand builds the method, else why not."""
    try:
        spec = method_spec(base, name, 0, 4, 2)
        from tune_hand.sweep.schedulers import build_scheduler
        from tune_hand.sweep.searcher import build_sampler

        build_scheduler(spec)
        build_sampler(spec)
    except Exception as e:  # noqa: BLE001 - reported as "not yet available"
        return f"{type(e).__name__}: {e}"
    return None


def _q(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) if values else math.nan


def run_benchmark(table: Table, methods: list[str], seeds: list[int], workers: int, budget_trials: int,
                  cap: float, metric: str, base=None, log=print) -> dict:
    base = base or load_spec(table.data.get("spec", "quick"))
    budget = budget_trials * table.epochs
    optimum = table.best_mean(metric)
    other = "rr_mpjpe_mm" if metric == "pa_mpjpe_mm" else "pa_mpjpe_mm"
    optimum_other = table.best_mean(other)
    noise_info = table.replicate_noise(metric)
    noise = noise_info["best_abs_diff_median_mm"] or 0.0
    missing = {m: why for m in methods if (why := available(base, m))}
    runnable = [m for m in methods if m not in missing]
    if BASELINE not in runnable:
        raise SystemExit(f"the baseline {BASELINE} must be among the methods")
    per_seed: dict[str, list[dict]] = {m: [] for m in runnable}
    for seed in seeds:
        t0 = time.perf_counter()
        runs = {}
        for m in runnable:
            horizon = budget if m == BASELINE else math.ceil(cap * budget)
            runs[m] = Replay(table, method_spec(base, m, seed, table.epochs, workers), workers, seed, horizon,
                             metric).run()
        ref = runs[BASELINE]
        target, target_seconds = best_at(ref.trace, budget), ref.trace[-1][1]
        target_other = best_at(ref.trace, budget, 3)
        for m, r in runs.items():
            hit, hit_other = first_reach(r.trace, target), first_reach(r.trace, target_other, 3)
            near = first_reach(r.trace, target + noise) if noise else hit
            per_seed[m].append({
                "seed": seed, "target": round(target, 3),
                "cost_ratio": min(hit[0] / budget, cap) if hit else cap,
                "cost_ratio_seconds": min(hit[1] / target_seconds, cap) if hit else cap,
                "reached": hit is not None,
                "cost_ratio_within_noise": min(near[0] / budget, cap) if near else cap,
                "final_best": round(best_at(r.trace, budget), 3),
                "cost_ratio_rr": min(hit_other[0] / budget, cap) if hit_other else cap,
                "final_best_rr": round(best_at(r.trace, budget, 3), 3),
                "trials": len(r.trials), "trial_epochs": r.spent})
        log(f"seed {seed:>3}: target {target:.2f} mm  " + "  ".join(
            f"{m} {per_seed[m][-1]['cost_ratio']:.2f}" for m in runnable) + f"  ({time.perf_counter() - t0:.1f}s)")
    summary = {}
    for m in runnable:
        rows = per_seed[m]
        ratios = [r["cost_ratio"] for r in rows]
        summary[m] = {
            "sampler": METHODS[m][0], "scheduler": METHODS[m][1]["type"],
            "cost_ratio_median": round(_q(ratios, 0.5), 3), "cost_ratio_p25": round(_q(ratios, 0.25), 3),
            "cost_ratio_p75": round(_q(ratios, 0.75), 3),
            "reached_fraction": round(sum(r["reached"] for r in rows) / len(rows), 3),
            "cost_ratio_within_noise_median": round(_q([r["cost_ratio_within_noise"] for r in rows], 0.5), 3),
            "cost_ratio_seconds_median": round(_q([r["cost_ratio_seconds"] for r in rows], 0.5), 3),
            "final_regret_mm": round(statistics.mean(r["final_best"] for r in rows) - optimum[0], 3),
            "final_regret_mm_median": round(_q([r["final_best"] - optimum[0] for r in rows], 0.5), 3),
            "cost_ratio_rr_median": round(_q([r["cost_ratio_rr"] for r in rows], 0.5), 3),
            "final_regret_rr_mm": round(statistics.mean(r["final_best_rr"] for r in rows) - optimum_other[0], 3),
            "trials_median": _q([r["trials"] for r in rows], 0.5),
            "per_seed": rows}
    for m, why in missing.items():
        summary[m] = {"sampler": METHODS[m][0], "scheduler": METHODS[m][1]["type"], "not_yet_available": why}
    return {"seeds": len(seeds), "seed_list": seeds, "metric": metric, "workers": workers,
            "budget": {"trial_epochs": budget, "full_trials": budget_trials, "cap": cap,
                       "unit": "trial-epochs (one reported validation epoch of one trial)"},
            "curves": {"configs": len(table.configs), "epochs": table.epochs,
                       "replicated_configs": sum(len(c["seeds"]) > 1 for c in table.configs),
                       "replicate_noise": {metric: noise_info, other: table.replicate_noise(other)},
                       "source": table.data.get("source", ""),
                       "provenance": table.data.get("provenance", {})},
            "optimum": {metric: {"value": round(optimum[0], 3), "config": optimum[1], "epoch": optimum[2]},
                        other: {"value": round(optimum_other[0], 3), "config": optimum_other[1],
                                "epoch": optimum_other[2]}},
            "methods": summary}


def load_table(path: Path) -> Table:
    data = json.loads(Path(path).read_text())
    data.setdefault("source", str(path))
    return Table(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", default=str(CURVES))
    parser.add_argument("--seeds", type=int, default=20, help="replay seeds 0 .. N-1")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--workers", type=int, default=2, help="W simulated workers (max_concurrent_trials)")
    parser.add_argument("--budget-trials", type=int, default=8, help="B = this many full trials' epochs")
    parser.add_argument("--cap", type=float, default=2.0, help="cost ratio when never reached within cap x B")
    parser.add_argument("--metric", default="pa_mpjpe_mm", choices=["pa_mpjpe_mm", "rr_mpjpe_mm"])
    parser.add_argument("--json")
    args = parser.parse_args()
    import optuna
    import ray.tune.schedulers  # noqa: F401  (Ray sets its loggers up on import: quiet them after)

    for name in ("ray", "ray.tune", "ray.tune.schedulers", "ray.tune.schedulers.pbt"):
        logging.getLogger(name).setLevel(logging.ERROR)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    table = load_table(Path(args.curves))
    print(f"curves: {len(table.configs)} configs x {table.epochs} epochs from {args.curves}; "
          f"W={args.workers}, B={args.budget_trials * table.epochs} trial-epochs, cap {args.cap}", flush=True)
    t0 = time.perf_counter()
    result = run_benchmark(table, args.methods, list(range(args.seeds)), args.workers, args.budget_trials,
                           args.cap, args.metric, log=lambda s: print(s, flush=True))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["command"] = "python benchmarks/bench_search_efficiency.py " + " ".join(sys.argv[1:])
    print(f"\n{'method':<15} {'cost ratio median [p25, p75]':>30} {'reached':>8} {'regret mm':>10} "
          f"{'ratio (s)':>10} {'rr ratio':>9} {'rr regret':>10}")
    for m, s in result["methods"].items():
        if "not_yet_available" in s:
            print(f"{m:<15} not yet available ({s['not_yet_available']})")
            continue
        print(f"{m:<15} {s['cost_ratio_median']:>12.3f} [{s['cost_ratio_p25']:.3f}, {s['cost_ratio_p75']:.3f}]"
              f"{s['reached_fraction']:>10.2f} {s['final_regret_mm']:>10.3f} {s['cost_ratio_seconds_median']:>10.3f}"
              f" {s['cost_ratio_rr_median']:>9.3f} {s['final_regret_rr_mm']:>10.3f}")
    print(f"optimum (seed-mean curve): {result['optimum']}; {result['seconds']}s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
