"""Driver cost per result of a sweep of many trivial trials: tune-hand's Tuner against plain Ray Tune.

    RAY_AUTH_MODE=disabled python benchmarks/bench_driver.py --json benchmarks/results/driver.json
    RAY_AUTH_MODE=disabled python benchmarks/bench_driver.py --trials 32 --iters 4 --slots 8   # quick
    RAY_AUTH_MODE=disabled python benchmarks/bench_driver.py --variants plain,tune-hand,tune-hand/no-1s

`--trials` trials each sleep `--interval` s then report (with a tiny checkpoint, as a real
trial's epoch does), `--iters` times, on `--slots` fake CPUs (one per trial). Variants, each in
its own local Ray:
    plain            Ray's defaults: random search (BasicVariantGenerator), FIFO, no callbacks
    tune-hand        `tune_hand.sweep.driver._build_tuner` as a sweep builds it (TrialStateOptunaSearch
                     behind ConcurrencyLimiter(max_concurrent_trials=slots), ResumableASHA with
                     min_snapshot_s=1, LiveTable, AshaStateCallback, CheckpointConfig(num_to_keep=3),
                     SyncConfig(sync_artifacts)); only its trainable is swapped for the trivial one
    tune-hand/no-1s  the same with min_snapshot_s=1e9: no forced snapshots, only Ray's own
                     (10 s apart); the difference is the cost of tune-hand's 1-s ones
Every trial reports the same metric, so ASHA records its rungs but stops no trial and every
variant handles trials x iters results.

256 trials at once are out of reach on this machine: a trial is an actor process of ~190 MB
(48 GB for 256) whose start costs 1-2 CPU-seconds of 2 shared cores. So `--slots` (32) trials run
at a time, each reporting once a second as in the 256-trial case, while all 256 trials pass
through the experiment (what a snapshot serialises and uploads, what the live table prints).
Costs per trial end weigh per result as at 256 trials; costs per second (the 1-s forced
snapshot, Ray's idle polling) weigh up to 8x more, as the driver sees 32 results/s, not 256.
Actors are reused between trials (TuneConfig(reuse_actors=True), patched into the sweep's
TuneConfig; `--fresh-actors` starts one per trial as a sweep does): else 256 actor starts alone
take many minutes here. Neither is the driver's cost.

The driver's cost is measured apart from the actors: CPU seconds of the driver process (all its
threads) and of its main thread (the controller loop) over the run, divided by the results; and
the main thread's CPU in the controller steps that handled a result (a step handles one event,
the experiment snapshot it may force included), per result: the marginal cost of a result,
without idle ticks and trial starts. Timers around the pieces (snapshots, searcher, scheduler,
callbacks, LiveTable) say where it went. The LiveTable prints into a counting sink, not the log.
The default (plain, tune-hand) takes about 6 minutes here, all four variants about 11.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a benchmark's own local Ray
# ResumableASHA's forced snapshots are deliberate; tune-hand's sweep silences the warning too.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import argparse
import contextlib
import functools
import io
import json
import platform
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
TARGET_MS = 10.0
METRIC = "rr_mpjpe_mm"


def trivial_trial(config: dict, iters: int, interval: float, checkpoint: bool) -> None:
    """Sleep, report; every trial reports the same values (so ASHA stops none)."""
    from ray import tune

    for i in range(iters):
        time.sleep(interval)
        metrics = {METRIC: 100.0 / (i + 1), "epoch": i + 1}
        if not checkpoint:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory(prefix="bench_ckpt_") as tmp:
            Path(tmp, "state.json").write_text(json.dumps({"epoch": i + 1}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


# -- timers around the driver's pieces ------------------------------------------------------------
class Timers:
    """Main-thread CPU seconds, wall seconds and calls per labelled method, by patching classes.

    The controller's steps are split by what they did: a step handles at most one event (Ray
    2.60's `TuneController.step`), so a step that called `_on_training_result` is the driver's
    whole main-thread cost of one result, the experiment snapshot it may force included.
    """

    RESULT = "result handling (_on_training_result)"

    def __init__(self):
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()
        self._stack = contextlib.ExitStack()

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._add(label, time.thread_time() - c0, time.perf_counter() - w0)

        self._stack.enter_context(mock.patch.object(owner, name, timed))

    def wrap_step(self, owner) -> None:
        original = owner.step

        @functools.wraps(original)
        def step(*args, **kwargs):
            c0, w0, n0 = time.thread_time(), time.perf_counter(), self.calls[self.RESULT]
            try:
                return original(*args, **kwargs)
            finally:
                label = "steps that handled a result" if self.calls[self.RESULT] > n0 else "other steps (idle, start, stop)"
                self._add(label, time.thread_time() - c0, time.perf_counter() - w0)

        self._stack.enter_context(mock.patch.object(owner, "step", step))

    def _add(self, label: str, cpu: float, wall: float) -> None:
        self.cpu[label] += cpu
        self.wall[label] += wall
        self.calls[label] += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False


def install_timers(t: Timers) -> None:
    from ray.train._internal import storage
    from ray.train._internal.syncer import _BackgroundSyncer
    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.search_generator import SearchGenerator

    from tune_hand.sweep.live_table import LiveTable
    from tune_hand.sweep.schedulers import ResumableASHA
    from tune_hand.sweep.searcher import TrialStateOptunaSearch

    t.wrap_step(TuneController)
    t.wrap(TuneController, "_on_training_result", t.RESULT)
    t.wrap(TuneController, "checkpoint", "experiment snapshot step (incl. sync wait)")
    t.wrap(TuneController, "save_to_dir", "experiment snapshots written")
    # A snapshot is uploaded from Ray's driver staging directory, trial logs included, by a
    # background thread; a forced snapshot first waits for the previous upload to finish.
    t.wrap(_BackgroundSyncer, "wait", "waiting for the previous upload")
    t.wrap(storage, "_upload_to_fs_path", "uploads (sync thread)")
    t.wrap(SearchGenerator, "next_trial", "searcher: next trial")
    t.wrap(BasicVariantGenerator, "next_trial", "searcher: next trial")
    t.wrap(TrialStateOptunaSearch, "on_trial_result", "searcher: on_trial_result")
    t.wrap(TrialStateOptunaSearch, "on_trial_complete", "searcher: on_trial_complete")
    t.wrap(ResumableASHA, "on_trial_result", "scheduler: on_trial_result")
    t.wrap(ResumableASHA, "on_trial_complete", "scheduler: on_trial_complete")
    t.wrap(CallbackList, "on_trial_result", "callbacks: on_trial_result (all)")
    t.wrap(CallbackList, "on_trial_complete", "callbacks: on_trial_complete (all)")
    t.wrap(LiveTable, "on_trial_result", "LiveTable.on_trial_result")
    t.wrap(LiveTable, "print", "LiveTable.print")


# -- the variants -------------------------------------------------------------------------------
def sweep_spec(args):
    """A spec like the shipped `quick` one (its search space), sized by the flags."""
    from tune_hand.sweep import load_spec, parse_spec

    raw = load_spec("quick").to_dict()
    raw.update(name="bench-driver", num_samples=args.trials, max_concurrent_trials=args.slots, max_failures=0,
               scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_epochs": args.iters},
               resources={"gpu": 0, "cpu": 1})
    return parse_spec(raw, source="bench_driver spec")


def trainable(args):
    from ray import tune

    bound = tune.with_parameters(trivial_trial, iters=args.iters, interval=args.interval,
                                 checkpoint=not args.no_checkpoint)
    return tune.with_resources(bound, {"cpu": 1})


def plain_tuner(args, storage: str, name: str):
    from ray import tune

    space = {"optim.lr": tune.loguniform(3e-4, 3e-3), "model.channels": tune.choice([16, 32]),
             "model.target": tune.choice(["root_relative", "camera"]),
             "milestones.first": tune.uniform(0.5, 0.75), "milestones.second": tune.uniform(0.75, 0.95)}
    return tune.Tuner(trainable(args), param_space=space,
                      tune_config=tune.TuneConfig(num_samples=args.trials, metric=METRIC, mode="min",
                                                  reuse_actors=not args.fresh_actors),
                      run_config=tune.RunConfig(storage_path=storage, name=name, verbose=0))


def tune_hand_tuner(args, storage: str, name: str, variant: str, stack: contextlib.ExitStack):
    from tune_hand.sweep import driver, schedulers, spec_hash

    spec = sweep_spec(args)
    meta = {"spec_hash": spec_hash(spec)}
    min_snapshot_s = 1e9 if variant == "tune-hand/no-1s" else 1.0
    stack.enter_context(mock.patch.object(driver, "_trainable", lambda spec, data_dir, local=True: trainable(args)))
    stack.enter_context(mock.patch.object(schedulers, "ResumableASHA",
                                          functools.partial(schedulers.ResumableASHA, min_snapshot_s=min_snapshot_s)))
    if not args.fresh_actors:
        from ray import tune

        stack.enter_context(mock.patch.object(tune, "TuneConfig", functools.partial(tune.TuneConfig, reuse_actors=True)))
    return driver._build_tuner(spec, "/unused", storage, name, meta)


class _CountingSink(io.TextIOBase):
    """Where the LiveTable's (and any other stderr) printing goes during a run: counted, not kept."""

    def __init__(self):
        self.chars = 0
        self.lines = 0

    def write(self, s: str) -> int:
        self.chars += len(s)
        self.lines += s.count("\n")
        return len(s)


def run_variant(variant: str, args, root: Path) -> dict:
    import ray

    name = variant.replace("/", "_")
    ray.init(num_cpus=args.slots, include_dashboard=False, log_to_driver=True)
    try:
        with contextlib.ExitStack() as stack:
            timers = stack.enter_context(Timers())
            install_timers(timers)  # before the tuner: tune_hand_tuner patches schedulers.ResumableASHA
            if variant == "plain":
                tuner = plain_tuner(args, str(root), name)
            else:
                tuner = tune_hand_tuner(args, str(root), name, variant, stack)
            sink = _CountingSink()
            stack.enter_context(contextlib.redirect_stderr(sink))
            w0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
            tuner.fit()
            wall, cpu, main = time.perf_counter() - w0, time.process_time() - c0, time.thread_time() - m0
    finally:
        ray.shutdown()
    rows = _result_rows(root / name)
    results = len(rows)
    step_s = timers.cpu["steps that handled a result"]
    return {
        "variant": variant, "trials": args.trials, "results": results, "expected_results": args.trials * args.iters,
        "wall_s": round(wall, 1), "results_per_s": round(results / wall, 1),
        "peak_results_per_s": max(Counter(int(r["timestamp"]) for r in rows).values(), default=0),
        "ideal_results_per_s": round(args.slots / args.interval, 1),
        "driver_cpu_s": round(cpu, 2), "driver_main_thread_cpu_s": round(main, 2),
        "driver_ms_per_result": round(1000 * cpu / max(results, 1), 2),
        "main_thread_ms_per_result": round(1000 * main / max(results, 1), 2),
        "result_step_ms_per_result": round(1000 * step_s / max(results, 1), 2),
        "snapshots": timers.calls["experiment snapshots written"],
        "stderr_lines": sink.lines, "stderr_mb": round(sink.chars / 1e6, 2),
        "pieces": {k: {"calls": timers.calls[k], "cpu_s": round(timers.cpu[k], 3), "wall_s": round(timers.wall[k], 3),
                       "cpu_ms_per_result": round(1000 * timers.cpu[k] / max(results, 1), 3),
                       "cpu_ms_per_call": round(1000 * timers.cpu[k] / max(timers.calls[k], 1), 3)}
                   for k in sorted(timers.calls)},
    }


def _result_rows(exp: Path) -> list[dict]:
    rows = []
    for path in exp.glob("*/result.json"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def print_table(out: dict) -> None:
    a = out["args"]
    print(f"driver cost per result: {a['trials']} trials x {a['iters']} reports, one every {a['interval']:g} s, "
          f"{a['slots']} fake CPU slots, checkpoint with each report: {not a['no_checkpoint']}, "
          f"actors reused: {not a['fresh_actors']}; {out['cpu']}, {out['cores']} cores, ray {out['ray']}")
    print(f"  {'variant':<19} {'results':>7} {'wall s':>6} {'res/s':>5} {'peak/s':>6} {'ideal/s':>7} "
          f"{'driver ms/res':>13} {'main':>6} {'others':>6} {'result steps':>12} {'snapshots':>9}  target")
    for r in out["rows"]:
        ok = "met" if r["driver_ms_per_result"] < TARGET_MS else "missed"
        others = r["driver_ms_per_result"] - r["main_thread_ms_per_result"]
        print(f"  {r['variant']:<19} {r['results']:>7} {r['wall_s']:>6.0f} {r['results_per_s']:>5.1f} "
              f"{r['peak_results_per_s']:>6} {r['ideal_results_per_s']:>7.0f} {r['driver_ms_per_result']:>13.2f} "
              f"{r['main_thread_ms_per_result']:>6.2f} {others:>6.2f} {r['result_step_ms_per_result']:>12.2f} "
              f"{r['snapshots']:>9}  {ok}")
    print(f"  target: under {TARGET_MS:g} ms of driver CPU (process, whole run) per result. main / others: its main "
          "thread / its other threads (Ray core, uploads); result steps: main-thread CPU of the controller steps "
          "that handled a result, per result")
    for r in out["rows"]:
        print(f"  {r['variant']}: by piece, CPU ms per result, calls, CPU ms per call, wall s in all "
              f"(main thread unless said); stderr {r['stderr_lines']} lines, {r['stderr_mb']} MB")
        for k, p in r["pieces"].items():
            print(f"    {k:<45} {p['cpu_ms_per_result']:>7.3f} {p['calls']:>6} {p['cpu_ms_per_call']:>8.2f} "
                  f"{p['wall_s']:>7.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=256)
    p.add_argument("--iters", type=int, default=10, help="reports per trial")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between a trial's reports")
    p.add_argument("--slots", type=int, default=32, help="fake CPUs: trials running at once")
    p.add_argument("--variants", default="plain,tune-hand",
                   help="comma-separated, of plain, tune-hand, tune-hand/no-1s")
    p.add_argument("--no-checkpoint", action="store_true", help="report without a checkpoint")
    p.add_argument("--fresh-actors", action="store_true", help="a new actor per trial, as a sweep runs")
    p.add_argument("--json")
    args = p.parse_args()
    import ray

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_driver_") as tmp:
        for variant in args.variants.split(","):
            print(f"running {variant} ...", flush=True)
            rows.append(run_variant(variant, args, Path(tmp)))
    out = {"args": vars(args), "cpu": platform.processor() or "cpu", "cores": os.cpu_count(), "ray": ray.__version__,
           "target_ms_per_result": TARGET_MS, "rows": rows}
    print_table(out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
