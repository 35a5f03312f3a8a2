"""Search efficiency on the synthetic task: ASHA + TPE against random search without early
stopping, on the same trial-epoch budget, over seeds (issue #6, benchmark 6).

    python benchmarks/bench_search_efficiency.py --json benchmarks/results/search_efficiency.json \\
        | tee benchmarks/results/search_efficiency.log
    python benchmarks/bench_search_efficiency.py --analyse-only --json benchmarks/results/search_efficiency.json
    python benchmarks/bench_search_efficiency.py --work /tmp/se_smoke --seeds 0 --random-trials 2 \\
        --asha-trials 3 --epochs 2 --json /tmp/se_smoke/out.json          # a smoke test (~1.5 min)

The saved results took 70 min on 2 cores shared with other jobs (load average 9-12 during seed 0,
which took 38 min; ~3.5 for seeds 1 and 2, 15-16 min each); on a quiet machine expect ~48 min,
~40 with --asha-trials 22 (see below). A GPU cluster scales it with --poses, --render-size,
--epochs, --random-trials, --concurrent, --gpu and `--set model.channels=...`-style values.

Real sweeps, not a simulation: `tune_hand.sweep.driver.run_search` on a local Ray, one synthetic
dataset rendered once (`render_dataset`, 240 poses x 4 colour versions at 64 px, 5 s; or
`--data DIR`), the shipped `quick` spec's space and model (the `small` preset: b0 at half width
and depth, 64 px, random init; decoder channels 16/32 searched), batch 16 (more steps per
epoch on 768 training images), validation fraction 0.2. Two methods per seed:
    asha+tpe  sampler tpe (Optuna's TPESampler(seed), the production settings), scheduler asha
              (grace --grace 1, reduction --rf 2, max_t --epochs 8): the sweep tune-hand runs
    random    sampler random (RandomSampler(seed)), scheduler fifo: every trial runs --epochs
Both use the same space, epoch budget, concurrency (2), dataset, validation split (data.seed =
seed) and init seed (train.seed = seed); the spec seed drives the sampler. TPE samples its
first n_startup_trials=10 trials with its own RandomSampler(seed), so for one seed both methods
start with the SAME configs in the same order: the comparison is paired, and configs that ran
the full budget in both sweeps are replicates that measure run-to-run noise (1.3 mm on average
here: same config and seeds, yet the runs differ; the cause was not investigated).
Random gets --random-trials K = 10 full trials: B = K x E = 80 trial-epochs. ASHA stops trials
early, so asha+tpe gets more trials (--asha-trials, default B / 2.7 = 30); asynchronous ASHA on
2 workers let 30-57% of them run all 8 epochs, so it spent 105-163 trial-epochs, more than B:
its curve is read at B too, and the target measure does not depend on its total.

The measure. Every reported epoch of every trial is one trial-epoch. Ordered by completion time
(a trial's start is max over its rows of Ray's integer `timestamp` minus `time_total_s`; a row
ends at start + `time_total_s`, so the order is right to within a second), the best-so-far of
the searched metric against cumulative trial-epochs is the search's curve (Ray's scope="all":
any epoch of any trial counts, as `tune-hand best` picks). Per seed: random's final best (over
its B trial-epochs), the trial-epochs asha+tpe needed to reach it and their ratio to B (also
"within the replicate noise"), and the reverse: what random needed to reach asha+tpe's best at
B/3. Target (issue #6): ratio <= 1/3.

The metric. The issue names validation `pa_mpjpe_mm`; the search uses `rr_mpjpe_mm` (--metric).
A pilot (random search, 4 trials x 8 epochs, seed 0) and then the `discrimination` block of the
JSON (the random sweeps' 30 full-length trials) show why: PA-MPJPE does separate configs beyond
its epoch noise (spread 2.4 mm vs 0.26), but what it separates is how close a config's
predictions got to the constant mean hand: not one of the 30 trials scored below the constant
camera-frame mean hand (35.8 mm; of asha+tpe's 90 trials two did, by 0.2 and 0.4 mm), let alone
the mean hand shape (21.6 mm). Its 5.5 mm drop from epoch 1 is the net collapsing onto the
average hand, so a search on it ranks configs by how fast they do that. `rr_mpjpe_mm` learns:
21/30 trials beat its constant (102 mm), the best by 18 mm. Both metrics' curves are reported
(each panel of the plot shows the constant as a line).

The result (benchmarks/results/search_efficiency.{json,log,png}): target missed. asha+tpe
reached random's final best after 69, 46 and 61 trial-epochs (ratios 0.86, 0.57, 0.76; 0.85,
0.40, 0.74 within the replicate noise); at B it was better (77.1 vs 84.2 mm, mean of seeds);
at B/3 the two were level (93.1 vs 92.5). Why, from the sweeps:
  - TPE's 10 startup trials are random search: they ended at trial-epochs 31-42, past B/3 = 26.
    Every crossing was made by a TPE-sampled trial (#12, #16, #17, at its epoch 5-6).
  - Epochs 1-2 do not rank configs: rr sits at ~100 mm (the constant's level) for nearly all of
    them, so ASHA's grace-1 rungs rank noise; they stopped random's best config at epoch 2
    (seed 1) and epoch 1 (seed 2). In seed 0 it ran in full but landed 1.8 mm worse (noise).
  - With 2 workers, asynchronous ASHA promotes the first trials at each rung against few or no
    records, so early trials run long: the savings ASHA promises come later in a sweep.

Trials write no TensorBoard images here (train.image_every=0), which costs nothing in the metric.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local benchmark Ray; read when ray is imported

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from tune_hand.config import parse_override
from tune_hand.sweep import Spec, load_spec, parse_spec
from tune_hand.sweep import load_status, run_search, trial_results

METHODS = {  # name -> (sampler, scheduler)
    "asha+tpe": ("tpe", "asha"),
    "random": ("random", "fifo"),
}
METRICS = ("pa_mpjpe_mm", "rr_mpjpe_mm")
# Synchronous ASHA with reduction 2 and rungs 1, 2, 4 of 8 spends ~2.5 epochs per trial; the saved
# run assumed a little more (2.7) and measured 3.5-5.4 (asynchronous, 2 workers, few records).
ASHA_EPOCHS_PER_TRIAL = 2.7


# -- the sweeps ----------------------------------------------------------------------------
def make_spec(method: str, seed: int, args) -> Spec:
    sampler, scheduler = METHODS[method]
    raw = load_spec(args.spec).to_dict()
    raw["fixed"].update({
        "data.num_workers": 0, "data.seed": seed, "data.val_fraction": args.val_fraction,
        "train.seed": seed, "train.image_every": 0, "optim.batch_size": args.batch_size,
    })
    for text in args.set or []:
        key, value = parse_override(text)
        raw["fixed"][key] = value
    raw.update({
        "name": f"search-efficiency-{method.replace('+', '-')}",
        "metric": args.metric, "mode": "min", "sampler": sampler, "seed": seed,
        "scheduler": {"type": scheduler, "grace_period": args.grace, "reduction_factor": args.rf,
                      "max_epochs": args.epochs},
        "num_samples": args.random_trials if method == "random" else args.asha_trials,
        "max_concurrent_trials": args.concurrent,
        "resources": {"gpu": args.gpu, "cpu": args.cpu_per_trial},
        "max_failures": 0,
    })
    return parse_spec(raw, source=f"bench_search_efficiency {method} seed {seed}")


def run_method(method: str, seed: int, data: Path, storage: Path, args) -> dict:
    spec = make_spec(method, seed, args)
    name = f"{method.replace('+', '-')}-seed{seed}"
    t0 = time.perf_counter()
    info = run_search(spec, data, storage=storage, name=name)
    return {**describe(info.path), "wall_s": time.perf_counter() - t0}


def describe(exp: str | Path) -> dict:
    """An ended sweep's trials: their count, states, and each one's params and epochs."""
    status = load_status(exp)
    states: dict[str, int] = {}
    for t in status["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    return {"experiment": str(exp), "wall_s": None, "trials": len(status["trials"]), "states": states,
            "num_samples": status["num_samples"],
            "params": {t["trial_id"]: t["config"] for t in status["trials"]}}


# -- the curves ----------------------------------------------------------------------------
def ordered_rows(exp: str | Path) -> list[dict]:
    """Every reported trial-epoch of an experiment, in completion order."""
    rows = []
    for trial_id, trial_rows in trial_results(exp).items():
        start = max(r["timestamp"] - r["time_total_s"] for r in trial_rows)
        for r in trial_rows:
            rows.append({"trial_id": trial_id, "epoch": int(r["epoch"]), "end": start + r["time_total_s"],
                         "diverged": bool(r.get("diverged")), **{m: r.get(m) for m in METRICS}})
    rows.sort(key=lambda r: (r["end"], r["trial_id"], r["epoch"]))
    t0 = rows[0]["end"] if rows else 0.0
    for r in rows:
        r["end"] -= t0
    return rows


def best_so_far(rows: list[dict], metric: str) -> list[float]:
    """The best (lowest) finite, non-diverged value among the first k trial-epochs, k = 1..n."""
    out, best = [], math.inf
    for r in rows:
        v = r[metric]
        if not r["diverged"] and isinstance(v, (int, float)) and math.isfinite(v):
            best = min(best, v)
        out.append(best)
    return out


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    """The first cumulative trial-epoch count whose best-so-far is at or below `target`."""
    return next((k + 1 for k, v in enumerate(curve) if v <= target), None)


def at(curve: list[float], k: int) -> float:
    """Best-so-far after k trial-epochs (the last value when the curve is shorter)."""
    return curve[min(k, len(curve)) - 1] if curve else math.inf


def constant_baselines(data: Path, seeds: list[int], val_fraction: float) -> list[dict]:
    """Per seed, both constant predictors' scores on that seed's validation split (data.seed)."""
    from tune_hand.evaluation import baseline_scores, split_items

    out = []
    for seed in seeds:
        reader, idx, train_xyz_mm = split_items(data, "val", seed, val_fraction)
        scores = baseline_scores(train_xyz_mm, reader.xyz[idx % reader.num_unique] * 1000.0)
        out.append({name: {m: float(v[m]) for m in METRICS} for name, v in scores.items()})
    return out


def discrimination(rows_by_seed: list[list[dict]], epochs: int, baselines: list[dict]) -> dict:
    """Does a metric tell configs apart on this budget? From full-length (random, FIFO) trials:
    the spread of trials' best values against the epoch-to-epoch noise inside a trial, how far
    the metric moves from epoch 1 to the last epoch, and how many trials beat the constant
    camera-frame mean hand (a trial that does not has learned nothing a constant would not)."""
    out = {}
    for m in METRICS:
        spreads, noises, moves, beat, n_full, margins = [], [], [], 0, 0, []
        for rows, base in zip(rows_by_seed, baselines):
            by_trial: dict[str, dict[int, float]] = {}
            for r in rows:
                if not r["diverged"] and r[m] is not None:
                    by_trial.setdefault(r["trial_id"], {})[r["epoch"]] = r[m]
            full = [v for v in by_trial.values() if len(v) == epochs]
            if len(full) < 2:
                continue
            constant = base["mean_hand_camera"][m]
            beat += sum(min(v.values()) < constant for v in full)
            n_full += len(full)
            margins.append(constant - min(min(v.values()) for v in full))
            spreads.append(float(np.std([min(v.values()) for v in full], ddof=1)))
            # noise: mean |change| over the trials' last half of epochs (learning has slowed there)
            half = max(2, epochs // 2)
            noises.append(float(np.mean([abs(v[e] - v[e - 1]) for v in full
                                         for e in range(epochs - half + 2, epochs + 1)])))
            moves.append(float(np.mean([v[1] - v[epochs] for v in full])))
        if spreads:
            s, n = float(np.mean(spreads)), float(np.mean(noises))
            out[m] = {"spread_across_configs_mm": s, "epoch_noise_mm": n, "spread_over_noise": s / n if n else None,
                      "drop_epoch1_to_last_mm": float(np.mean(moves)),
                      "trials_below_mean_hand_camera": f"{beat}/{n_full}",
                      "best_trial_below_mean_hand_camera_mm": float(np.mean(margins)),
                      "mean_hand_camera_mm": float(np.mean([b["mean_hand_camera"][m] for b in baselines])),
                      "mean_hand_shape_mm": float(np.mean([b["mean_hand_shape"][m] for b in baselines]))}
    return out


def analyse(runs: dict, args) -> dict:
    budget = args.random_trials * args.epochs
    per_seed, curves = [], {}
    for seed in args.seeds:
        row = {"seed": seed}
        for method in METHODS:
            r = runs[(method, seed)]
            rows = ordered_rows(r["experiment"])
            c = {m: best_so_far(rows, m) for m in METRICS}
            curves[(method, seed)] = c
            r.update({"trial_epochs": len(rows), "final_best": {m: c[m][-1] if c[m] else None for m in METRICS},
                      "best_at_third_of_budget": {m: at(c[m], budget // 3) for m in METRICS},
                      "best_at_budget": {m: at(c[m], budget) for m in METRICS},
                      "rows": rows})
            row[method] = r
        target = row["random"]["final_best"][args.metric]
        reached = epochs_to_reach(curves[("asha+tpe", seed)][args.metric], target)
        random_total = row["random"]["trial_epochs"]
        row["random_final_best"] = target
        row["asha_epochs_to_random_best"] = reached
        row["ratio"] = reached / random_total if reached else None
        # the other way round: what random needed to reach asha+tpe's best at B/3
        asha_third = row["asha+tpe"]["best_at_third_of_budget"][args.metric]
        row["random_epochs_to_asha_third_best"] = epochs_to_reach(curves[("random", seed)][args.metric], asha_third)
        row["replicates"] = replicates(row["asha+tpe"], row["random"], args.metric, args.epochs)
        per_seed.append(row)
    # Run-to-run noise of one config: both methods draw their first configs from the same seeded
    # RandomSampler (TPE's startup trials), so configs that ran the full budget in both sweeps are
    # replicates. Reaching random's best "within that noise" is reported beside the strict figure.
    diffs = [abs(d) for row in per_seed for d in row["replicates"]["diffs"]]
    tol = float(np.mean(diffs)) if diffs else 0.0
    for row in per_seed:
        reached = epochs_to_reach(curves[("asha+tpe", row["seed"])][args.metric], row["random_final_best"] + tol)
        row["asha_epochs_to_random_best_within_noise"] = reached
        row["ratio_within_noise"] = reached / row["random"]["trial_epochs"] if reached else None
    return {"per_seed": per_seed, "curves": curves, "budget": budget, "replicate_noise_mm": tol,
            "replicate_pairs": len(diffs)}


def replicates(asha: dict, random: dict, metric: str, epochs: int) -> dict:
    """Configs that ran all `epochs` in both sweeps of a seed: their best values' differences."""
    def full_best(r: dict) -> dict[str, float]:
        by_trial: dict[str, list] = {}
        for x in r["rows"]:
            if not x["diverged"] and x[metric] is not None:
                by_trial.setdefault(x["trial_id"], []).append(x[metric])
        return {json.dumps(r["params"].get(tid, {}), sort_keys=True): min(v)
                for tid, v in by_trial.items() if len(v) == epochs}

    a, b = full_best(asha), full_best(random)
    common = sorted(set(a) & set(b))
    return {"pairs": len(common), "diffs": [a[k] - b[k] for k in common]}


# -- output --------------------------------------------------------------------------------
def print_table(result: dict, args) -> None:
    m, other = args.metric, next(x for x in METRICS if x != args.metric)
    budget = result["budget"]
    print(f"\nsearched metric {m} (mm, lower is better); B = {args.random_trials} x {args.epochs} = {budget} "
          f"trial-epochs; B/3 = {budget // 3}")
    print(f"{'seed':>4} {'method':<9} {'trials':>6} {'t-ep':>5} {'wall s':>7} {'best@B/3':>9} {'best@B':>8}"
          f" {'final':>7} {'final ' + other[:2]:>9}  states")
    for row in result["per_seed"]:
        for method in METHODS:
            r = row[method]
            states = ", ".join(f"{n} {s}" for s, n in sorted(r["states"].items()))
            print(f"{row['seed']:>4} {method:<9} {r['trials']:>6} {r['trial_epochs']:>5} {r['wall_s'] or 0:>7.0f}"
                  f" {r['best_at_third_of_budget'][m]:>9.2f} {r['best_at_budget'][m]:>8.2f}"
                  f" {r['final_best'][m]:>7.2f} {r['final_best'][other]:>9.2f}  {states}")
    tol = result["replicate_noise_mm"]
    print(f"\n{'seed':>4} {'random final best':>18} {'asha+tpe t-ep to reach it':>26} {'ratio':>6}"
          f" {f'same, within {tol:.1f} mm':>20} {'ratio':>6} {'random t-ep to reach asha+tpe@B/3':>34}")

    def reach(k: int | None, row: dict) -> str:
        return str(k) if k else f"not in {row['asha+tpe']['trial_epochs']}"

    for row in result["per_seed"]:
        rr = row["random_epochs_to_asha_third_best"]
        print(f"{row['seed']:>4} {row['random_final_best']:>18.2f} {reach(row['asha_epochs_to_random_best'], row):>26}"
              f" {format(row['ratio'], '.2f') if row['ratio'] else '-':>6}"
              f" {reach(row['asha_epochs_to_random_best_within_noise'], row):>20}"
              f" {format(row['ratio_within_noise'], '.2f') if row['ratio_within_noise'] else '-':>6}"
              f" {(str(rr) if rr else 'not reached'):>34}")
    s = result["summary"]
    print(f"\nreached in {s['seeds_reached']}/{len(args.seeds)} seeds; ratio per seed {s['ratios']}; "
          f"target <= 1/3: {'met' if s['target_met'] else 'missed'}")
    print(f"replicate noise: {result['replicate_pairs']} configs ran all {args.epochs} epochs in both sweeps of their "
          f"seed (same config, same seeds); their best {m} differed by {tol:.2f} mm on average")
    print(f"mean best-so-far over seeds ({m}):  at B/3  asha+tpe {s['mean_at_third']['asha+tpe']:.2f}  random "
          f"{s['mean_at_third']['random']:.2f};  at B  asha+tpe {s['mean_at_budget']['asha+tpe']:.2f}  random "
          f"{s['mean_at_budget']['random']:.2f}")
    if result.get("discrimination"):
        print("\nmetric discrimination from the random sweeps' full-length trials (mean over seeds):")
        for name, d in result["discrimination"].items():
            print(f"  {name:<12} spread of trials' best {d['spread_across_configs_mm']:5.2f} mm, epoch-to-epoch noise "
                  f"{d['epoch_noise_mm']:4.2f} mm (ratio {d['spread_over_noise']:.1f}), drop epoch 1 -> "
                  f"{args.epochs} {d['drop_epoch1_to_last_mm']:+6.2f} mm; constant hands: camera mean "
                  f"{d['mean_hand_camera_mm']:.2f}, shape mean {d['mean_hand_shape_mm']:.2f}; trials beating the "
                  f"camera mean {d['trials_below_mean_hand_camera']}, the best by "
                  f"{d['best_trial_below_mean_hand_camera_mm']:+.2f} mm")


def summarise(result: dict, args) -> dict:
    budget = result["budget"]
    ratios = [row["ratio"] for row in result["per_seed"]]
    reached = [r for r in ratios if r is not None]

    def mean_at(method: str, k: int) -> float:
        return float(np.mean([at(result["curves"][(method, s)][args.metric], k) for s in args.seeds]))

    return {
        "ratios": [None if r is None else round(r, 3) for r in ratios],
        "seeds_reached": len(reached),
        "mean_ratio_reached": float(np.mean(reached)) if reached else None,
        "target_met": len(reached) == len(ratios) and float(np.mean(reached)) <= 1 / 3,
        "target_met_every_seed": all(r is not None and r <= 1 / 3 for r in ratios),
        "mean_at_third": {m: mean_at(m, budget // 3) for m in METHODS},
        "mean_at_budget": {m: mean_at(m, budget) for m in METHODS},
        "mean_random_final_best": float(np.mean([row["random_final_best"] for row in result["per_seed"]])),
        "replicate_noise_mm": result["replicate_noise_mm"], "replicate_pairs": result["replicate_pairs"],
        "ratios_within_noise": [None if row["ratio_within_noise"] is None else round(row["ratio_within_noise"], 3)
                                for row in result["per_seed"]],
    }


def plot(result: dict, args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"asha+tpe": "tab:blue", "random": "tab:orange"}
    metrics = [args.metric] + [m for m in METRICS if m != args.metric]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2))
    budget = result["budget"]
    for ax, m in zip(axes, metrics):
        for method in METHODS:
            cs = [result["curves"][(method, s)][m] for s in args.seeds]
            # step after each trial-epoch; the last value is drawn out to the curve's end
            for c in cs:
                ax.step(range(1, len(c) + 2), c + c[-1:], where="post", color=colours[method], alpha=0.3, lw=1)
            n = min(len(c) for c in cs)
            if n:
                mean = list(np.mean([c[:n] for c in cs], axis=0))
                ax.step(range(1, n + 2), mean + mean[-1:], where="post", color=colours[method],
                        lw=2.2, label=f"{method} (mean of {len(cs)} seeds)")
        ax.axvline(budget / 3, color="grey", ls=":", lw=1)
        ax.text(budget / 3, ax.get_ylim()[1], " B/3", va="top", fontsize=8, color="grey")
        if m == args.metric:
            ax.axhline(result["summary"]["mean_random_final_best"], color=colours["random"], ls="--", lw=1)
        constant = result.get("discrimination", {}).get(m, {}).get("mean_hand_camera_mm")
        if constant is not None:  # what predicting the training set's mean hand scores
            ax.axhline(constant, color="black", ls="-.", lw=1,
                       label="constant: mean hand (camera frame), mean of seeds")
        ax.set_xlabel("cumulative trial-epochs")
        ax.set_ylabel(f"best validation {m} so far")
        ax.set_title(f"{m}" + (" (searched)" if m == args.metric else " (not searched)"))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"ASHA + TPE vs random search (FIFO), {args.epochs}-epoch trials, seeds {args.seeds}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="an existing FreiHAND-layout dataset (default: render one under --work)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_search_efficiency"),
                   help="where the dataset and the sweeps go; re-running resumes the sweeps found there")
    p.add_argument("--poses", type=int, default=240, help="unique training poses to render (x4 colour versions)")
    p.add_argument("--render-size", type=int, default=64, help="rendered image size, px")
    p.add_argument("--spec", default="quick", help="the spec whose base, space and fixed values are used")
    p.add_argument("--metric", default="rr_mpjpe_mm", choices=METRICS, help="the searched metric (see the doc)")
    p.add_argument("--epochs", type=int, default=8, help="E: every trial's epoch budget (ASHA's max_t)")
    p.add_argument("--random-trials", type=int, default=10, help="K: random search's trials; B = K x E")
    p.add_argument("--asha-trials", type=int, help=f"asha+tpe's num_samples (default B / {ASHA_EPOCHS_PER_TRIAL})")
    p.add_argument("--grace", type=int, default=1)
    p.add_argument("--rf", type=float, default=2)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--gpu", type=float, default=0, help="GPUs per trial")
    p.add_argument("--cpu-per-trial", type=float, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--set", action="append", help="more fixed config values, section.key=value")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--json", type=Path)
    p.add_argument("--analyse-only", action="store_true",
                   help="read the sweeps already in --work (no Ray); per-sweep wall times from --json if it exists")
    args = p.parse_args()
    if args.asha_trials is None:
        args.asha_trials = math.ceil(args.random_trials * args.epochs / ASHA_EPOCHS_PER_TRIAL)

    began = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data
    render = None
    if args.analyse_only:
        analyse_only(args, data or args.work / "data", began)
        return
    if data is None:
        data = args.work / "data"
        if not (data / "training_K.json").is_file():
            from tune_hand.data.synthetic import render_dataset

            render = render_dataset(data, n_train=args.poses, n_eval=0, seed=0, image_size=args.render_size,
                                    with_mesh_files=False, workers=min(2, os.cpu_count() or 1))
            print(f"data: {render['train_images']} training images ({args.poses} poses x 4) at {args.render_size} px "
                  f"rendered in {render['seconds']:.1f}s -> {data}", flush=True)
    print(f"data: {data}; E={args.epochs} epochs, random {args.random_trials} trials (B = "
          f"{args.random_trials * args.epochs} trial-epochs), asha+tpe {args.asha_trials} trials (ASHA grace "
          f"{args.grace}, reduction {args.rf:g}), {args.concurrent} concurrent, metric {args.metric}, "
          f"seeds {args.seeds}",
          flush=True)

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    runs = {}
    try:
        for seed in args.seeds:
            for method in args.methods:
                r = run_method(method, seed, data, args.work / "sweeps", args)
                runs[(method, seed)] = r
                states = ", ".join(f"{n} {s}" for s, n in r["states"].items())
                print(f"seed {seed} {method:<9} {r['trials']} trials ({states})"
                      f" in {r['wall_s']:.0f}s, elapsed {time.perf_counter() - began:.0f}s", flush=True)
    finally:
        ray.shutdown()
    if set(args.methods) != set(METHODS):  # a pilot: only whether the metrics tell configs apart
        if "random" in args.methods:
            rows = [ordered_rows(runs[("random", s)]["experiment"]) for s in args.seeds]
            base = constant_baselines(data, args.seeds, args.val_fraction)
            print(json.dumps(discrimination(rows, args.epochs, base), indent=1))
        return
    report(runs, args, data, render, time.perf_counter() - began)


def analyse_only(args, data: Path, began: float) -> None:
    previous = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    walls = {(m, r["seed"]): r[m].get("wall_s") for r in previous.get("per_seed", []) for m in METHODS}
    runs = {}
    for seed in args.seeds:
        for method in METHODS:
            runs[(method, seed)] = describe(args.work / "sweeps" / f"{method.replace('+', '-')}-seed{seed}")
            runs[(method, seed)]["wall_s"] = walls.get((method, seed))
    render = {"seconds": previous["render_s"]} if previous.get("render_s") else None
    print(f"(analysis of the sweeps in {args.work / 'sweeps'}; wall times from the run that made them)")
    report(runs, args, data, render, previous.get("wall_s") or time.perf_counter() - began)


def report(runs: dict, args, data: Path, render: dict | None, wall: float) -> None:
    import ray

    result = analyse(runs, args)
    baselines = constant_baselines(data, args.seeds, args.val_fraction)
    for row, base in zip(result["per_seed"], baselines):
        row["constant_baselines"] = base
    result["discrimination"] = discrimination([row["random"]["rows"] for row in result["per_seed"]], args.epochs,
                                              baselines)
    result["summary"] = summarise(result, args)
    print_table(result, args)
    print(f"\ntotal {wall:.0f}s on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        per_seed = []
        for row in result["per_seed"]:
            out_row = {k: v for k, v in row.items() if k not in METHODS}
            for method in METHODS:
                r = dict(row[method])
                rows = r.pop("rows")
                r.pop("params")
                c = result["curves"][(method, row["seed"])]
                r["curve"] = {"trial_epochs": list(range(1, len(rows) + 1)),
                              "end_s": [round(x["end"], 2) for x in rows],
                              **{f"best_{m}": c[m] for m in METRICS}}
                r["trial_rows"] = [{k: x[k] for k in ("trial_id", "epoch", *METRICS)} for x in rows]
                out_row[method] = r
            per_seed.append(out_row)
        import optuna
        import torch

        args.json.write_text(json.dumps({
            "benchmark": "search efficiency: asha+tpe vs random (fifo), same trial-epoch budget",
            "target": "asha+tpe reaches random's final best with <= 1/3 of its trial-epochs",
            "metric": args.metric, "metrics_reported": list(METRICS),
            "epochs": args.epochs, "random_trials": args.random_trials, "asha_trials": args.asha_trials,
            "budget_trial_epochs": result["budget"], "grace": args.grace, "reduction_factor": args.rf,
            "concurrent": args.concurrent, "batch_size": args.batch_size, "val_fraction": args.val_fraction,
            "spec": args.spec, "set": args.set or [], "seeds": args.seeds, "data": str(data),
            "poses": args.poses if render else None, "render_size": args.render_size if render else None,
            "render_s": render["seconds"] if render else None,
            "summary": result["summary"], "discrimination": result["discrimination"],
            "replicate_noise_mm": result["replicate_noise_mm"], "per_seed": per_seed,
            "wall_s": wall, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "versions": {"ray": ray.__version__, "optuna": optuna.__version__, "torch": torch.__version__},
        }, indent=1, default=float))
        plot(result, args, args.json.with_suffix(".png"))


if __name__ == "__main__":
    main()
