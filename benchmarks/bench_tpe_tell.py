"""What to tell Optuna's TPE about a trial ASHA stopped early, and about one that diverged:
a simulated ASHA sweep, repeated over seeds, one row per tell policy.

    python benchmarks/bench_tpe_tell.py --json benchmarks/results/tpe_tell.json \\
        | tee benchmarks/results/tpe_tell.log
    python benchmarks/bench_tpe_tell.py --seeds 4 --settings 48x4   # a quick look (~15 s)

The default (24 seeds, two sweep shapes: 48 trials x 4 workers, and 64 x 8 as in
search_spaces/paper.yaml) takes about 1 minute on 2 idle cores; the saved results used --seeds 60.

Measures, per policy and sweep setting, averaged over seeds (mean +- standard error, and the
paired difference to Ray's default, which uses the same seeds):
    true_final   the noise-free metric at max_t of the config the sweep would pick (the
                 finished trial with the best reported value); what the search really found
    regret       (JSON) true_final minus the best true_final in the space (dense random estimate)
    epochs       trial-epochs spent (the sweep's compute)
    sampled      the best noise-free final metric among all configs the sweep sampled (what a
                 perfect pick among them would give: sampling quality without selection noise)
    diverged     trials sampled that diverged
    finished     trials that ran the full max_t
    same         seeds whose sweep sampled exactly the configs ray-default sampled: where the
                 two policies gave TPE the same below/above split at every ask

Policies (stopped = ASHA stopped it early, diverged = NaN loss, sentinel 1e6 reported):
    ray-default     stopped -> COMPLETE(last value)  diverged -> COMPLETE(1e6)   (OptunaSearch)
    last/fail       stopped -> COMPLETE(last)        diverged -> FAIL
    last/pruned     stopped -> COMPLETE(last)        diverged -> PRUNED
    best/fail       stopped -> COMPLETE(best value)  diverged -> FAIL
    best/pruned     stopped -> COMPLETE(best)        diverged -> PRUNED
    pruned/fail     stopped -> PRUNED                diverged -> FAIL
    pruned/pruned   stopped -> PRUNED                diverged -> PRUNED   (tune_hand.sweep.searcher)
    random          RandomSampler, same ASHA: the floor that any policy should beat
A trial that ran the full budget is told COMPLETE with its last value under ray-default and
last/*, with its best value otherwise (as `TrialStateOptunaSearch` does).

The objective. `true_curve` is a learning curve of PA-MPJPE (mm, lower is better) for a config
of the space below (close to search_spaces/paper.yaml, rescaled to max_t epochs):
    lr        log-uniform [1e-5, 1e-3]; 10 mm per decade**2 penalty around an optimum that
              moves lower for wider decoders (2.2e-4 at 256 channels, 4.5e-4 at 64); higher lr
              converges faster; above ~5e-4 (lower for wider models) a trial diverges within
              its first epochs with a probability rising to 0.9.
    channels  {64, 96, 128, 192, 256}: capacity, saturating at 192.
    blocks    3..5: 4 best; more blocks converge a little slower; wide and deep models overfit
              without rotation augmentation.
    milestones.first / .second  fractions of max_t in [0.4, 0.75] / [0.75, 0.98]; each lr
              drop x0.1 slows further progress ten-fold but gives a step improvement that
              settles over a few epochs (3 mm and 1 mm at a good lr). Early drops freeze an
              unconverged slow run; late ones leave the step no time to settle.
    aug_rotate, aug_color, aug_scale  on/off; each lowers the asymptote (rotation most, more
              so for wider models) but raises the early error and slows convergence: these
              curves cross the plain ones after ASHA's first rungs, the case where early values
              mislead.
    curve(t) = A + (M0 - A) exp(-u(t) / tau) - step1(t) - step2(t), u = lr-weighted epochs,
    plus per trial a seed offset N(0, 0.4) and per epoch evaluation noise N(0, 0.3 + ...).
A trial's noise and divergence come from (seed, trial number), so every policy of one seed
sees the same luck for its n-th trial: policies are compared paired.

The ASHA emulation mirrors Ray 2.x `AsyncHyperBandScheduler` with one bracket: rungs at
g * rf**k (k = 0 .. int(log(max_t/g)/log(rf))), a result at epoch >= a rung the trial has not
been recorded in is compared with the cutoff `np.nanpercentile(recorded, (1 - 1/rf) * 100)` of
rewards (-metric) recorded there so far, then recorded; stop if reward < cutoff; stop at max_t.
`concurrency` workers run trials asynchronously; epoch times depend on the model size (wider
and deeper models are slower), so rung decisions see only what finished earlier in simulated
time. A new trial is asked from Optuna when a worker frees. As in Ray's TuneController, the
result that makes ASHA stop a trial (and the max_t result) is NOT passed to the searcher's
`on_trial_result`, so it is never `trial.report`ed; it is only the `last_result` that Ray's
`on_trial_complete` tells as COMPLETE (a searcher that tracks a trial's best value in
`on_trial_result` never sees that last epoch). A diverged trial's sentinel result goes through
ASHA (and is reported unless ASHA stops on it), then the trial ends.

Why the policies barely differ: optuna/samplers/_tpe/sampler.py (Optuna 5.0).
`TPESampler._sample` reads only COMPLETE and PRUNED trials (and RUNNING ones: constant_liar
defaults to True), splits them with `_split_trials` into "below" = gamma(n) = min(ceil(0.1 n),
25) good trials and "above" = all the rest, fits a Parzen estimator to each and samples the
candidate maximising l(x)/g(x). `_split_trials` fills "below" from the COMPLETE trials sorted by
value first (`_split_complete_trials`); PRUNED trials enter it only while fewer than gamma(n)
trials are COMPLETE, ordered by `_get_pruned_trial_score` = (-last reported step, value there):
the deeper a pruned trial got, the better, whatever its value. Inside each group the values
are no longer used (`default_weights` depends on trial order, not value). FAIL trials are not
read at all (`states = (COMPLETE, PRUNED)`), not even for the n_startup_trials=10 count. So:
  (a) COMPLETE(last) ranks an epoch-3 value against others' epoch-30 values; as curves fall
      with epochs, the best values are those of trials that went deepest, i.e. "below" holds
      the finished trials once there are gamma(n) of them (about 10 of 48 finish here).
  (c) PRUNED puts finished trials first and the rest by depth: the same "below" as (a) except
      early in the sweep, before gamma(n) trials have finished, and the same "above".
  (b) COMPLETE(best) only reorders by each trial's luckiest noisy epoch.
  Diverged: COMPLETE(1e6) and PRUNED both land in "above" (the `same` column shows last/pruned
  sampling exactly what ray-default samples); FAIL drops the trial, so TPE never learns that
  the high-lr region diverges and keeps sampling there (the `diverged` column).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

DIVERGED_METRIC = 1.0e6  # mm, tune_hand.objective.DIVERGED_VALUE
CHANNELS = (64, 96, 128, 192, 256)
CAPACITY_MM = {64: 3.0, 96: 1.5, 128: 0.6, 192: 0.0, 256: 0.1}
BLOCKS_MM = {3: 0.8, 4: 0.0, 5: 0.3}


# -- the synthetic objective ----------------------------------------------------------------
def suggest(trial: optuna.Trial) -> dict:
    """Define-by-run sampling, as `tune_hand.sweep.space.define_by_run` does for the real space."""
    return {
        "lr": trial.suggest_float("optim.lr", 1e-5, 1e-3, log=True),
        "channels": trial.suggest_categorical("model.channels", list(CHANNELS)),
        "blocks": trial.suggest_int("model.blocks", 3, 5),
        "first": trial.suggest_float("milestones.first", 0.4, 0.75),
        "second": trial.suggest_float("milestones.second", 0.75, 0.98),
        "aug_rotate": trial.suggest_categorical("augment.rotate", [False, True]),
        "aug_color": trial.suggest_categorical("augment.color", [False, True]),
        "aug_scale": trial.suggest_categorical("augment.scale", [False, True]),
    }


def random_params(rng: np.random.Generator, n: int) -> dict:
    """n uniform draws of the space, as arrays (for the dense estimate of the optimum)."""
    return {
        "lr": 10 ** rng.uniform(-5, -3, n), "channels": rng.choice(CHANNELS, n),
        "blocks": rng.integers(3, 6, n), "first": rng.uniform(0.4, 0.75, n),
        "second": rng.uniform(0.75, 0.98, n), "aug_rotate": rng.random(n) < 0.5,
        "aug_color": rng.random(n) < 0.5, "aug_scale": rng.random(n) < 0.5,
    }


def lr_optimum(channels):
    return 10 ** (-3.5 - 0.15 * np.log2(np.asarray(channels) / 128))


def true_curve(p: dict, t, max_t: int):
    """Noise-free PA-MPJPE (mm) after t epochs of a max_t-epoch run; p's values may be arrays."""
    lr, ch, blocks = np.asarray(p["lr"]), np.asarray(p["channels"]), np.asarray(p["blocks"])
    rot, col, sca = (np.asarray(p[k], dtype=float) for k in ("aug_rotate", "aug_color", "aug_scale"))
    asymptote = (27.0 + 10.0 * (np.log10(lr) - np.log10(lr_optimum(ch))) ** 2
                 + np.vectorize(CAPACITY_MM.get)(ch) + np.vectorize(BLOCKS_MM.get)(blocks)
                 + 2.0 * (ch / 256) * (blocks - 3) / 2 * (1 - rot)   # wide and deep overfits unaugmented
                 - rot * (1.5 + 0.75 * np.log2(ch / 64)) - 1.0 * col - 0.6 * sca)
    start = 70.0 + 6.0 * rot + 2.0 * col + 1.0 * sca   # augmented data is harder at first
    tau = (2.5 * np.sqrt(5e-4 / lr) * (1 + 0.5 * rot) * (1 + 0.15 * col) * (1 + 0.1 * sca)
           * (1 + 0.1 * (blocks - 4)))
    # The trial's lr drops, as tune_hand.sweep.space.milestone_epochs places them.
    t1 = np.clip(np.round(np.asarray(p["first"]) * max_t), 1, max_t)
    t2 = np.clip(np.round(np.asarray(p["second"]) * max_t), 1, max_t)
    t2 = np.where(t2 > t1, t2, t1 + 1)
    t = np.asarray(t, dtype=float)
    progress = np.minimum(t, t1) + 0.1 * np.clip(t - t1, 0, t2 - t1) + 0.01 * np.maximum(t - t2, 0)
    gain = lr / (lr + 3e-5)   # the drop helps less when the lr was already tiny
    step1 = 3.0 * gain * (1 - np.exp(-np.maximum(t - t1, 0) / 4.0))
    step2 = 1.0 * gain * (1 - np.exp(-np.maximum(t - t2, 0) / 2.0))
    return asymptote + (start - asymptote) * np.exp(-progress / tau) - step1 - step2


def divergence_epoch(p: dict, rng: np.random.Generator, max_t: int) -> int | None:
    """The epoch whose loss is NaN, or None: likely at high lr, earlier for wider models."""
    edge = 7e-4 * math.sqrt(128 / p["channels"])
    chance = 0.9 / (1 + math.exp(-(math.log10(p["lr"]) - math.log10(edge)) / 0.07))
    epoch = int(rng.geometric(0.3))
    first_drop = max(1, round(p["first"] * max_t))
    return epoch if rng.random() < chance and epoch < first_drop else None


def epoch_seconds(p: dict, rng: np.random.Generator) -> float:
    return (0.6 + 0.4 * p["channels"] / 256) * (0.85 + 0.15 * (p["blocks"] - 3)) * rng.uniform(0.9, 1.1)


# -- ASHA, as Ray's AsyncHyperBandScheduler with one bracket --------------------------------
class Asha:
    def __init__(self, grace: int, rf: float, max_t: int):
        self.rf, self.max_t = rf, max_t
        n_rungs = int(np.log(max_t / grace) / np.log(rf) + 1)
        self.rungs = [(grace * rf ** k, {}) for k in reversed(range(n_rungs))]

    def _bracket(self, trial: int, epoch: int, reward: float) -> bool:
        """Ray's _Bracket.on_result (stop_last_trials=True); True means stop."""
        for milestone, recorded in self.rungs:
            if epoch < milestone or trial in recorded:
                continue
            stop = bool(recorded) and reward < np.nanpercentile(list(recorded.values()),
                                                                (1 - 1 / self.rf) * 100)
            recorded[trial] = reward
            return stop
        return False

    def on_result(self, trial: int, epoch: int, metric: float) -> bool:
        return True if epoch >= self.max_t else self._bracket(trial, epoch, -metric)

    def on_complete(self, trial: int, epoch: int, metric: float) -> None:
        self._bracket(trial, epoch, -metric)


# -- one sweep -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    name: str
    stopped: str    # last | best | pruned
    diverged: str   # complete | fail | pruned
    sampler: str = "tpe"


POLICIES = [Policy("ray-default", "last", "complete"),
            Policy("last/fail", "last", "fail"), Policy("last/pruned", "last", "pruned"),
            Policy("best/fail", "best", "fail"), Policy("best/pruned", "best", "pruned"),
            Policy("pruned/fail", "pruned", "fail"), Policy("pruned/pruned", "pruned", "pruned"),
            Policy("random", "last", "complete", sampler="random")]


@dataclass(frozen=True)
class Setting:
    trials: int
    concurrency: int
    max_t: int = 30
    grace: int = 3
    rf: float = 3

    @property
    def name(self) -> str:
        return f"{self.trials}x{self.concurrency}"


def tell(study, trial, outcome: str, values: list[float], policy: Policy) -> None:
    if outcome == "diverged":
        if policy.diverged == "complete":
            study.tell(trial, DIVERGED_METRIC)          # Ray tells the last result
        else:
            study.tell(trial, state=TrialState.FAIL if policy.diverged == "fail" else TrialState.PRUNED)
    elif outcome == "stopped" and policy.stopped == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif policy.stopped == "last":
        study.tell(trial, values[-1])
    else:
        study.tell(trial, min(values))


def run_sweep(setting: Setting, policy: Policy, seed: int) -> dict:
    """One simulated sweep; returns what it found and what it cost."""
    sampler = (optuna.samplers.TPESampler(seed=seed) if policy.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    asha = Asha(setting.grace, setting.rf, setting.max_t)
    epochs_axis = np.arange(1, setting.max_t + 1)
    runs, events, clock = [], [], 0.0

    def start(now: float) -> None:
        n = len(runs)
        trial = study.ask()
        p = suggest(trial)
        rng = np.random.default_rng([seed, n])
        curve = true_curve(p, epochs_axis, setting.max_t)
        # A seed offset for the whole run, and evaluation noise that is larger early on.
        observed = curve + rng.normal(0, 0.4) + rng.normal(0, 1, setting.max_t) * (0.3 + 0.02 * (curve - curve[-1]))
        runs.append({"trial": trial, "params": p, "observed": observed, "values": [],
                     "diverge_at": divergence_epoch(p, rng, setting.max_t),
                     "seconds": epoch_seconds(p, rng), "outcome": None})
        heapq.heappush(events, (now + runs[n]["seconds"], n))

    for _ in range(min(setting.concurrency, setting.trials)):
        start(clock)
    while events:
        clock, n = heapq.heappop(events)
        run = runs[n]
        epoch = len(run["values"]) + 1
        diverged = run["diverge_at"] == epoch
        value = DIVERGED_METRIC if diverged else float(run["observed"][epoch - 1])
        run["values"].append(value)
        stop = asha.on_result(n, epoch, value)
        if not stop:   # Ray passes a result to the searcher only when the scheduler continues
            run["trial"].report(value, step=epoch)
        if stop or diverged:
            asha.on_complete(n, epoch, value)
            run["outcome"] = "diverged" if diverged else "finished" if epoch >= setting.max_t else "stopped"
            tell(study, run["trial"], run["outcome"], run["values"], policy)
            if len(runs) < setting.trials:
                start(clock)
        else:
            heapq.heappush(events, (clock + run["seconds"], n))

    finished = [r for r in runs if r["outcome"] == "finished"]
    pick = min(finished, key=lambda r: min(r["values"]))
    finals = [float(true_curve(r["params"], setting.max_t, setting.max_t)) for r in runs]
    return {"true_final": float(true_curve(pick["params"], setting.max_t, setting.max_t)),
            "best_sampled": min(finals),
            "configs": [tuple(sorted(r["params"].items())) for r in runs],
            "epochs": sum(len(r["values"]) for r in runs),
            "diverged": sum(r["outcome"] == "diverged" for r in runs),
            "finished": len(finished),
            "rotate_share": float(np.mean([r["params"]["aug_rotate"] for r in runs]))}


def _job(args):
    setting, policy, seed = args
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return setting.name, policy.name, seed, run_sweep(setting, policy, seed)


def best_possible(max_t: int, n: int = 400_000) -> float:
    """The best true final metric in the space, from a dense random draw plus local polish."""
    rng = np.random.default_rng(0)
    p = random_params(rng, n)
    values = true_curve(p, max_t, max_t)
    best = {k: v[np.argmin(values)] for k, v in p.items()}
    local = {k: np.full(n // 4, v) for k, v in best.items()}
    local["lr"] = best["lr"] * 10 ** rng.uniform(-0.2, 0.2, n // 4)
    local["first"] = rng.uniform(0.4, 0.75, n // 4)
    local["second"] = rng.uniform(0.75, 0.98, n // 4)
    local["lr"] = np.clip(local["lr"], 1e-5, 1e-3)
    return float(min(values.min(), true_curve(local, max_t, max_t).min()))


def mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def summarise(rows: dict, base: dict) -> dict:
    """Mean and standard error over seeds of one policy's results, and the paired difference."""
    seeds = sorted(rows)

    def col(key: str) -> tuple[float, float]:
        return mean_se([rows[s][key] for s in seeds])

    return {"true_final": col("true_final"), "best_sampled": col("best_sampled"),
            "diff": mean_se([rows[s]["true_final"] - base[s]["true_final"] for s in seeds]),
            "epochs": col("epochs"), "diverged": col("diverged"), "finished": col("finished"),
            "rotate_share": col("rotate_share"),
            "same": sum(rows[s]["configs"] == base[s]["configs"] for s in seeds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=24)
    p.add_argument("--settings", nargs="+", default=["48x4", "64x8"],
                   help="TRIALSxCONCURRENCY sweeps (max_t 30, grace 3, reduction 3 unless set)")
    p.add_argument("--max-t", type=int, default=30)
    p.add_argument("--grace", type=int, default=3)
    p.add_argument("--rf", type=float, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json")
    args = p.parse_args()
    settings = [Setting(*map(int, s.split("x")), max_t=args.max_t, grace=args.grace, rf=args.rf)
                for s in args.settings]
    jobs = [(s, pol, seed) for s in settings for pol in POLICIES for seed in range(args.seeds)]
    began = time.perf_counter()
    with Pool(args.workers) as pool:
        results = pool.map(_job, jobs, chunksize=1)
    wall = time.perf_counter() - began
    optimum = best_possible(args.max_t)

    by: dict = {}
    for setting, policy, seed, r in results:
        by.setdefault(setting, {}).setdefault(policy, {})[seed] = r
    print(f"TPE tell policies under ASHA (max_t {args.max_t}, grace {args.grace}, reduction {args.rf:g}), "
          f"{args.seeds} seeds, optuna {optuna.__version__}, {wall:.0f} s on {args.workers} workers")
    print(f"best true final metric in the space: {optimum:.2f} mm")
    table = []
    for setting in settings:
        rungs = [m for m, _ in reversed(Asha(setting.grace, setting.rf, setting.max_t).rungs)]
        print(f"\n{setting.trials} trials, {setting.concurrency} concurrent, rungs at epochs {rungs}")
        print(f"  {'policy':<14} {'true final mm':>14} {'vs ray-default':>15} {'sampled':>8} {'epochs':>11}"
              f" {'diverged':>10} {'finished':>8} {'rotate':>6} {'same':>6}")
        base = by[setting.name]["ray-default"]
        for policy in POLICIES:
            m = summarise(by[setting.name][policy.name], base)
            (f, fse), (d, dse), (e, ese), (v, vse) = m["true_final"], m["diff"], m["epochs"], m["diverged"]
            print(f"  {policy.name:<14} {f:>6.2f} +- {fse:<4.2f} {d:>+6.2f} +- {dse:<4.2f} {m['best_sampled'][0]:>8.2f}"
                  f" {e:>5.0f} +- {ese:<3.0f} {v:>4.1f} +- {vse:<3.1f} {m['finished'][0]:>8.1f}"
                  f" {m['rotate_share'][0]:>6.2f} {m['same']:>3}/{args.seeds}")
            seeds = sorted(by[setting.name][policy.name])
            table.append({"setting": setting.name, "trials": setting.trials, "concurrency": setting.concurrency,
                          "policy": policy.name, "stopped_as": policy.stopped, "diverged_as": policy.diverged,
                          "sampler": policy.sampler,
                          "true_final_mm": f, "true_final_se": fse, "regret_mm": f - optimum,
                          "diff_vs_ray_default_mm": d, "diff_vs_ray_default_se": dse,
                          "best_sampled_mm": m["best_sampled"][0], "best_sampled_se": m["best_sampled"][1],
                          "trial_epochs": e, "trial_epochs_se": ese,
                          "diverged_trials": v, "diverged_trials_se": vse,
                          "finished_trials": m["finished"][0], "rotate_share": m["rotate_share"][0],
                          "seeds_same_as_ray_default": m["same"],
                          "per_seed_true_final_mm": [by[setting.name][policy.name][s]["true_final"] for s in seeds]})
    print("\n(mean +- standard error over seeds; 'vs ray-default' is the paired difference on the same seeds;"
          " lower is better;\n 'sampled' is the best true final among all sampled configs; 'rotate' the share"
          " of sampled configs with rotation; 'same' the seeds whose sweep sampled exactly ray-default's configs)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "optuna": optuna.__version__, "seeds": args.seeds, "max_t": args.max_t, "grace": args.grace,
            "reduction_factor": args.rf, "best_possible_mm": optimum, "wall_s": wall,
            "machine": platform.processor() or platform.machine(), "workers": args.workers,
            "rows": table}, indent=2))


if __name__ == "__main__":
    main()
