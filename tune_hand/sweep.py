"""The sweep driver: Ray Tune + Optuna (TPE) + ASHA over a spec, and what it leaves on disk.

    info = run_search("quick", data_dir="data/", storage="sweeps", name="q1")
    info = resume_search("sweeps/q1")
    status = load_status("sweeps/q1")          # from storage alone; no Ray needed
    export_best("sweeps/q1", "best/")          # config.yaml, checkpoint.pt, metrics.json, provenance.json

The experiment directory is Ray's (`RunConfig(storage_path, name)`), plus two files of ours:
    EXP/tune_hand_spec.yaml     the effective spec, base config inlined (self-contained)
    EXP/tune_hand_sweep.json    spec hash, dataset, metric/mode, epoch budget, creation time
Everything `resume`, `status` and `best` need lives there.

On a multi-node cluster (`--address`) the dataset path must exist on every node, and the
storage must be shared (NFS path or bucket URI): Ray writes trial results and checkpoints there.
Every function here takes a local directory or a bucket URI (`s3://bkt/sweeps/q1`; see
`tune_hand.storage` for endpoints and credentials): the readers work on a temporary copy of
the experiment's small files (`open_experiment`), and `export_best` downloads one checkpoint.

This module and the cluster helpers are the only tune_hand modules that import ray, and only
inside the functions that start or resume a sweep: `status` and `best` run without Ray.
Note (Ray 2.60): after a run Ray re-syncs its staged copy of the experiment directory, older
`experiment_state-*.json` files and ours included, so never rely on mtimes there and never
edit our files while a sweep runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import config as C
from .checkpoint import FILENAME, checkpoint_config, load_checkpoint
from .errors import ConfigError, DataError, TuneHandError
from .io import atomic_directory, write_json
from .spec import Spec, load_spec, parse_spec, spec_diff, spec_hash, with_overrides
from .storage import ExperimentDir, display, is_remote, join, list_files, normalize, open_dir, write_text

SPEC_FILE = "tune_hand_spec.yaml"
SWEEP_FILE = "tune_hand_sweep.json"
DEFAULT_STORAGE = "sweeps"
CHECKPOINTS_TO_KEEP = 3


@dataclass
class ExperimentInfo:
    path: str
    name: str
    spec_hash: str
    trials: int
    states: dict[str, int] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- running -------------------------------------------------------------------------------
def run_search(spec: Spec | str | Path, data_dir: str | Path, storage: str | Path | None = None,
               name: str | None = None, address: str | None = None, samples: int | None = None,
               overrides: list[str] | None = None) -> ExperimentInfo:
    """Start a sweep; blocks until every trial ended (or Ctrl-C, after which `resume` continues).

    Submitting the same sweep again (same name, spec and dataset: a requeued batch job, a
    re-run command) resumes it; a different spec or dataset under an existing name is refused.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if overrides or samples is not None:
        spec = with_overrides(spec, overrides, samples)
    data_dir = _check_data(data_dir, remote=address is not None)
    if address is None:
        _check_weights(spec)
    name = name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = _storage(storage)
    exp = join(storage, name)
    if _has_run(exp):
        _, stored = read_experiment(exp)
        check_unchanged(exp, stored, spec)
        if stored.get("data_dir") != data_dir:
            raise TuneHandError(f"{display(exp)}: this sweep runs on {stored.get('data_dir')}, not {data_dir}; "
                                f"if the dataset moved, `tune-hand resume {display(exp)} --data {data_dir}`")
        print(f"tune-hand: {display(exp)} already holds this sweep (spec hash {stored['spec_hash']}); resuming it",
              file=sys.stderr)
        return resume_search(exp, address=address)
    meta = {"spec_hash": spec_hash(spec), "name": name, "spec_name": spec.name, "data_dir": data_dir,
            "metric": spec.metric, "mode": spec.mode, "max_epochs": spec.max_epochs,
            "num_samples": spec.num_samples, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "spec": spec.to_dict()}
    _write_text(join(exp, SPEC_FILE), spec.to_yaml())
    _write_text(join(exp, SWEEP_FILE), json.dumps(meta, indent=2) + "\n")

    start = time.perf_counter()
    with _ray_session(address):
        tuner = _build_tuner(spec, data_dir, storage, name, meta, local=address is None)
        _fit(tuner, exp)
    return _summary(exp, meta, time.perf_counter() - start)


def resume_search(exp_dir: str | Path, address: str | None = None, data_dir: str | Path | None = None) -> ExperimentInfo:
    """Continue an interrupted sweep from its storage: unfinished and errored trials resume from
    their last checkpoints; the searcher's state is restored; new trials fill num_samples."""
    from ray import tune

    exp = _exp_path(exp_dir)
    spec, meta = read_experiment(exp)
    check_unchanged(exp, meta, spec)
    data_dir = _check_data(data_dir or meta["data_dir"], remote=address is not None)
    if not tune.Tuner.can_restore(exp):
        raise TuneHandError(f"{display(exp)}: Ray has no experiment state to restore here (did the search start?)")
    start = time.perf_counter()
    with _ray_session(address):
        tuner = tune.Tuner.restore(exp, trainable=_trainable(spec, data_dir, local=address is None),
                                   resume_errored=True)
        _fit(tuner, exp)
    return _summary(exp, meta, time.perf_counter() - start)


def check_unchanged(exp: str, meta: dict[str, Any], spec: Spec) -> None:
    """Refuse to continue a sweep under a spec other than the one it started with: its trials,
    Optuna's study and ASHA's rungs all belong to that spec."""
    new_hash = spec_hash(spec)
    if new_hash == meta.get("spec_hash"):
        return
    changes = spec_diff(meta["spec"], spec.to_dict()) if isinstance(meta.get("spec"), dict) else []
    what = "; ".join(changes) or f"spec hash {meta.get('spec_hash')} -> {new_hash}"
    raise TuneHandError(f"{display(exp)}: the spec differs from the one this sweep started with ({what}); "
                        f"a sweep resumes only under its own spec ({SPEC_FILE}): restore it, or start "
                        "a new sweep with another --name")


def _has_run(exp: str) -> bool:
    """Whether Ray has started in `exp` (more than our two files, written just before it). For a
    bucket, one listing of the prefix; a missing bucket or refused access is a TuneHandError
    here, before anything is written."""
    if is_remote(exp):
        return any(rel.split("/")[0] not in (SPEC_FILE, SWEEP_FILE) for rel in list_files(exp))
    path = Path(exp)
    return path.is_dir() and any(p.name not in (SPEC_FILE, SWEEP_FILE) for p in path.iterdir())


def _fit(tuner, exp: str) -> None:
    """Run the trials. Ray Tune handles the first Ctrl-C itself (it saves the experiment state
    and returns); a second one raises KeyboardInterrupt through here."""
    try:
        tuner.fit()
    except KeyboardInterrupt:
        print(f"tune-hand: interrupted; continue with `tune-hand resume {display(exp)}`", file=sys.stderr)
        raise


def _build_tuner(spec: Spec, data_dir: str, storage: str, name: str, meta: dict[str, Any], local: bool = True):
    from optuna.samplers import RandomSampler, TPESampler
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from .search_alg import AshaStateCallback, LiveTable, ResumableASHA, TrialStateOptunaSearch
    from .spec import search_space

    sampler = TPESampler(seed=spec.seed) if spec.sampler == "tpe" else RandomSampler(seed=spec.seed)
    searcher = TrialStateOptunaSearch(space=search_space(spec), metric=spec.metric, mode=spec.mode,
                                      sampler=sampler, max_epochs=spec.max_epochs)
    # Always limited: without max_concurrent Ray lets a custom searcher keep only one trial
    # pending, so a cluster fills one trial per scheduling round (benchmarks/bench_driver.py).
    searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent_trials or _cluster_slots(spec, local))
    scheduler = None
    callbacks: list[Any] = [LiveTable(_table_header(spec, meta, display(join(storage, name))))]
    if spec.scheduler.type == "asha":
        scheduler = ResumableASHA(time_attr="training_iteration", max_t=spec.max_epochs,
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
        # Pickled together with the scheduler in Ray's tuner.pkl, so a restored sweep's callback
        # puts the rung records back into the restored scheduler.
        callbacks.append(AshaStateCallback(scheduler))
    return tune.Tuner(
        _trainable(spec, data_dir, local),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.num_samples,
                                    metric=spec.metric, mode=spec.mode, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            storage_path=storage, name=name,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=CHECKPOINTS_TO_KEEP, checkpoint_score_attribute=spec.metric,
                checkpoint_score_order=spec.mode),
            callbacks=callbacks,
            sync_config=tune.SyncConfig(sync_artifacts=True),  # each trial's TensorBoard images
            verbose=0),  # the LiveTable callback reports progress
    )


def _cluster_slots(spec: Spec, local: bool) -> int:
    """How many trials the Ray cluster can run at once now, under the spec's resources (the
    default for max_concurrent_trials)."""
    import ray

    total = ray.cluster_resources()
    res = trial_resources(spec, total.get("GPU", 0), local=local, warn=False)
    slots = max(1, int(min(total.get(key.upper(), 0) / res[key] for key in ("cpu", "gpu") if res[key])))
    if not local:
        print(f"tune-hand: max_concurrent_trials is not in the spec; running at most {slots} trials at once "
              "(what the cluster holds now); on an autoscaling cluster set it to the GPU workers' maximum",
              file=sys.stderr)
    return slots


def _table_header(spec: Spec, meta: dict[str, Any], exp: str) -> dict[str, Any]:
    return {"experiment": exp, "spec_name": spec.name, "spec_hash": meta["spec_hash"], "metric": spec.metric,
            "mode": spec.mode, "max_epochs": spec.max_epochs, "num_samples": spec.num_samples,
            "space": [p.key for p in spec.space]}


def trial_dirname(trial) -> str:
    """`train_hand_pose_<trial_id>`: Ray's default packs every parameter into the name."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def _trainable(spec: Spec, data_dir: str, local: bool = True):
    """The trainable with its spec and dataset bound, sized by the spec's resources."""
    import ray
    from ray import tune

    from trainables.hand_pose import train_hand_pose

    bound = tune.with_parameters(train_hand_pose, spec=spec.to_dict(), data_dir=data_dir)
    return tune.with_resources(bound, trial_resources(spec, ray.cluster_resources().get("GPU", 0), local=local))


def trial_resources(spec: Spec, cluster_gpus: float, local: bool = True, warn: bool = True) -> dict[str, float]:
    """Per-trial resources. The local Ray of a machine without GPUs runs GPU specs on CPUs, with
    a warning; a remote cluster keeps the GPU request (an autoscaler adds GPU nodes for it)."""
    res = {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]}
    if res["gpu"] and not cluster_gpus:
        if local:
            res["gpu"] = 0
        if warn:
            print(f"tune-hand: warning: the spec asks for {spec.resources['gpu']:g} GPU per trial but the Ray "
                  "cluster has no GPUs" + (f"; running each trial on {res['cpu']:g} CPU instead" if local else
                                           "; trials wait until GPU nodes join (autoscaling)"), file=sys.stderr)
    return res


class _ray_session:
    """Connect to `address`, or start a local Ray sized to this machine; shut down what we started."""

    def __init__(self, address: str | None):
        self.address = address
        self.started = False

    def __enter__(self):
        if not self.address and "ray" not in sys.modules:
            # Deliberately token auth for the local Ray we start (Ray's own default, here without its
            # warning): anyone who can reach this machine's Ray ports could otherwise run code on it.
            # RAY_AUTH_MODE=disabled in the environment opts out (the test suite does). Ray reads
            # the variable when it is imported, hence before `import ray`.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=os.cpu_count(), **kwargs)
            self.started = True
        # ResumableASHA asks for an experiment snapshot whenever a trial ends; Ray warns about
        # frequent snapshots, which here are deliberate.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        return self

    def __exit__(self, *exc):
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        return False


# -- the experiment on disk ----------------------------------------------------------------
Experiment = str | Path | ExperimentDir  # a local directory, a bucket URI, or one already opened


def open_experiment(exp_dir: Experiment, trials: bool = True):
    """A context manager giving the experiment as an ExperimentDir: a local experiment in
    place; for a bucket a temporary copy of the files the readers below need, made from one
    listing: our two files, the newest experiment_state-*.json and, with `trials`, each trial's
    params.json, result.json and error.txt (checkpoints stay in the bucket until fetched).
    Open one once when calling several readers: each reader given a path opens its own.

        with open_experiment("s3://bkt/sweeps/q1") as exp:
            status, results = load_status(exp), trial_results(exp)
    """
    if isinstance(exp_dir, ExperimentDir):
        return contextlib.nullcontext(exp_dir)
    return open_dir(_exp_path(exp_dir), lambda files: _files_to_read(files, trials))


TRIAL_FILES = ("params.json", "result.json", "error.txt")  # what status, best and the report read per trial


def _files_to_read(files, trials: bool) -> list[str]:
    top = [f for f in files if "/" not in f]
    # Newest by the timestamp in the name, as Ray chooses (never by mtime: see the module note).
    states = sorted(f for f in top if f.startswith("experiment_state-") and f.endswith(".json"))
    wanted = [SPEC_FILE, SWEEP_FILE] + states[-1:]
    if trials:
        wanted += [f for f in files if f.count("/") == 1 and f.rsplit("/", 1)[1] in TRIAL_FILES]
    return wanted


def read_experiment(exp_dir: Experiment) -> tuple[Spec, dict[str, Any]]:
    """(spec, sweep metadata) stored with an experiment by `run_search`."""
    with open_experiment(exp_dir, trials=False) as exp:
        spec_file, meta_file = exp.path / SPEC_FILE, exp.path / SWEEP_FILE
        if not spec_file.is_file() or not meta_file.is_file():
            raise TuneHandError(f"{display(exp.uri)}: not a tune-hand experiment (no {SPEC_FILE} / {SWEEP_FILE})")
        try:
            raw = yaml.safe_load(spec_file.read_text())
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise TuneHandError(f"{display(exp.uri)}: unreadable experiment files "
                                f"({' '.join(str(e).split())[:200]})") from None
        return parse_spec(raw, source=join(display(exp.uri), SPEC_FILE)), meta


def load_status(exp_dir: Experiment) -> dict[str, Any]:
    """Every trial of an experiment and the best, from its files alone (no Ray, no cluster).

    A trial's state: finished (ran the whole budget), stopped early (ASHA), diverged, error,
    running, pending. `best_metric` is the trial's best reported value (diverged epochs
    excluded); `best` is the best trial-epoch of the experiment (Ray's scope="all").
    """
    with open_experiment(exp_dir) as opened:
        return _status(opened)


def _status(opened: ExperimentDir) -> dict[str, Any]:
    exp = opened.path
    spec, meta = read_experiment(opened)
    ray_states = _ray_trial_states(exp)
    trials = []
    for trial_dir in _trial_dirs(exp):
        rows = _results(trial_dir)
        params = _read_json(trial_dir / "params.json") or {}
        trial_id = rows[-1]["trial_id"] if rows else _trial_id_from_dir(trial_dir, ray_states)
        best_row = _best_row(rows, spec.metric, spec.mode)
        epochs = max((int(r.get("epoch", r.get("training_iteration", 0))) for r in rows), default=0)
        trials.append({
            "trial_id": trial_id,
            "state": _state(ray_states.get(trial_id), rows, trial_dir, spec.max_epochs),
            "epochs": epochs,
            "best_metric": best_row[spec.metric] if best_row else None,
            "best_epoch": int(best_row["epoch"]) if best_row else None,
            "config": params,
            "dir": trial_dir.name,
        })
    for trial_id, state in ray_states.items():  # trials Ray created but that never wrote a file
        if not any(t["trial_id"] == trial_id for t in trials):
            trials.append({"trial_id": trial_id, "state": _STATE_NAMES.get(state, state.lower()), "epochs": 0,
                           "best_metric": None, "best_epoch": None, "config": {}, "dir": None})
    scored = [t for t in trials if t["best_metric"] is not None]
    sign = 1 if spec.mode == "min" else -1
    best = min(scored, key=lambda t: sign * t["best_metric"]) if scored else None
    return {"experiment": display(opened.uri), "name": meta.get("name"), "spec_name": spec.name,
            "spec_hash": meta.get("spec_hash"), "metric": spec.metric, "mode": spec.mode, "max_epochs": spec.max_epochs,
            "num_samples": spec.num_samples, "space": [p.key for p in spec.space], "trials": trials,
            "best": None if best is None else {k: best[k] for k in ("trial_id", "best_metric", "best_epoch",
                                                                     "config")}}


def export_best(exp_dir: Experiment, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the best trial's BEST-epoch checkpoint, config, metrics and provenance to `out_dir`.

    The best trial is the one with the best reported metric over all its epochs (Ray's
    `get_best_result(metric, mode, scope="all")`); its checkpoint is the best-scored one kept
    (`Result.get_best_checkpoint(metric, mode)`), never the latest. From a bucket, that one
    checkpoint file is the only large object downloaded, straight into `out_dir`.
    """
    with open_experiment(exp_dir) as exp:
        spec, meta = read_experiment(exp)
        trial_dir, row, rel = _best_checkpoint(exp, spec)
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            source = exp.fetch(rel, tmp / FILENAME)
            state = load_checkpoint(source)
            cfg = checkpoint_config(state, source)
            provenance = {
                "experiment": display(exp.uri), "trial_id": row["trial_id"], "trial_dir": trial_dir.name,
                "epoch": int(state["epoch"]), "checkpoint": rel,
                "metric": spec.metric, "mode": spec.mode, "value": row[spec.metric],
                "spec_hash": meta.get("spec_hash"), "spec_name": spec.name, "config_digest": cfg.digest(),
                "params": _read_json(trial_dir / "params.json") or {},
                "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            if provenance["epoch"] != int(row["epoch"]):
                raise TuneHandError(f"{join(display(exp.uri), rel)}: holds epoch {provenance['epoch']} but its "
                                    f"result row says {row['epoch']}; the experiment directory is inconsistent")
            cfg.to_yaml(tmp / "config.yaml")
            write_json(tmp / "metrics.json", {k: v for k, v in row.items() if k != "config"})
            write_json(tmp / "provenance.json", provenance)
    return {"out": str(out_dir), **provenance}


def best_checkpoint(exp_dir: Experiment) -> tuple[Path, dict[str, Any], Path]:
    """(trial directory, result row, checkpoint file) of the best trial-epoch that kept a checkpoint.

    For a bucket, pass an experiment opened with `open_experiment`: the checkpoint is
    downloaded into it and lasts as long as it is open.
    """
    if not isinstance(exp_dir, ExperimentDir) and is_remote(str(exp_dir)):
        raise ValueError("best_checkpoint of a bucket experiment: pass open_experiment(uri), which holds the file")
    with open_experiment(exp_dir) as exp:
        spec, _ = read_experiment(exp)
        trial_dir, row, rel = _best_checkpoint(exp, spec)
        return trial_dir, row, exp.fetch(rel)


def _best_checkpoint(exp: ExperimentDir, spec: Spec) -> tuple[Path, dict[str, Any], str]:
    """(local trial directory, result row, the checkpoint's path relative to the experiment)."""
    best = None
    for trial_dir in _trial_dirs(exp.path):
        for row in _results(trial_dir):
            if not (_scored(row, spec.metric) and row.get("checkpoint_dir_name")
                    and exp.has(f"{trial_dir.name}/{row['checkpoint_dir_name']}/{FILENAME}")):
                continue
            if best is None or _better(row[spec.metric], best[1][spec.metric], spec.mode):
                best = (trial_dir, row)
    if best is None:
        raise TuneHandError(f"{display(exp.uri)}: no trial has reported {spec.metric} with a checkpoint yet")
    return best[0], best[1], f"{best[0].name}/{best[1]['checkpoint_dir_name']}/{FILENAME}"


def trial_results(exp_dir: Experiment) -> dict[str, list[dict[str, Any]]]:
    """trial_id -> its reported rows, one per epoch in epoch order (from storage; no Ray)."""
    out = {}
    with open_experiment(exp_dir) as exp:
        for trial_dir in _trial_dirs(exp.path):
            rows = _results(trial_dir)
            if rows:
                out[rows[-1]["trial_id"]] = rows
    return out


# -- reading Ray's files ---------------------------------------------------------------------
_STATE_NAMES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "pending", "ERROR": "error"}


def _trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").is_file())


def _results(trial_dir: Path) -> list[dict[str, Any]]:
    """Every reported row of a trial (result.json holds one JSON object per line)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a torn last line of a killed trial
            continue
        # A trial resumed from an older checkpoint (a driver killed between experiment snapshots)
        # reports some epochs again; the later report is the one its checkpoints belong to.
        by_epoch[int(row.get("epoch", row.get("training_iteration", 0)) or 0)] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def _ray_trial_states(exp: Path) -> dict[str, str]:
    """trial_id -> Ray's status (PENDING, RUNNING, TERMINATED, ERROR) from the newest experiment state."""
    # Newest by the timestamp in the name, as Ray chooses: Ray re-syncs older state files from its
    # staging directory after a restored run, so their mtimes say nothing.
    states = sorted(p.name for p in exp.glob("experiment_state-*.json"))
    if not states:
        return {}
    data = _read_json(exp / states[-1]) or {}
    out = {}
    for entry in data.get("trial_data", []):
        try:
            trial = json.loads(entry[0]) if isinstance(entry, (list, tuple)) else entry
            out[trial["trial_id"]] = trial["status"]
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _trial_id_from_dir(trial_dir: Path, states: dict[str, str]) -> str:
    return next((tid for tid in states if tid in trial_dir.name), trial_dir.name)


def _state(ray_state: str | None, rows: list[dict], trial_dir: Path, max_epochs: int) -> str:
    if ray_state is None and (trial_dir / "error.txt").exists():
        ray_state = "ERROR"
    last = max(rows, key=lambda r: int(r.get("epoch", 0) or 0), default={})
    return live_state(ray_state, last, max_epochs)


def live_state(ray_state: str | None, last: dict[str, Any], max_epochs: int) -> str:
    """A trial's state as status, the live table and the report show it: pending, running,
    finished, stopped early, diverged, error. `last` is its latest reported result."""
    if last.get("diverged"):
        return "diverged"
    if ray_state == "ERROR":
        return "error"
    if ray_state in ("PENDING", "RUNNING", "PAUSED"):
        return _STATE_NAMES[ray_state]
    if ray_state == "TERMINATED" or last:
        return "finished" if int(last.get("epoch", 0) or 0) >= max_epochs else "stopped early"
    return "pending"


def _scored(row: dict, metric: str) -> bool:
    value = row.get(metric)
    return isinstance(value, (int, float)) and math.isfinite(value) and not row.get("diverged")


def _better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


def _best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    best = None
    for row in rows:
        if _scored(row, metric) and (best is None or _better(row[metric], best[metric], mode)):
            best = row
    return best


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _summary(exp: str, meta: dict, seconds: float) -> ExperimentInfo:
    """What the sweep left in storage (local or bucket, read once), with a hint to resume
    when Ray returned before every trial ended (a Ctrl-C, a failure)."""
    with open_experiment(exp) as opened:
        ray_states = _ray_trial_states(opened.path)
        status = _status(opened)
    if len(ray_states) < status["num_samples"] or \
            any(s in ("RUNNING", "PENDING", "PAUSED") for s in ray_states.values()):
        print(f"tune-hand: the sweep stopped before all trials ended; continue with `tune-hand resume "
              f"{display(exp)}`", file=sys.stderr)
    states: dict[str, int] = {}
    for t in status["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    return ExperimentInfo(path=display(exp), name=meta["name"], spec_hash=meta["spec_hash"],
                          trials=len(status["trials"]), states=states, best=status["best"], seconds=seconds)


# -- paths and storage -----------------------------------------------------------------------
def _storage(storage: str | Path | None) -> str:
    storage = str(storage or DEFAULT_STORAGE)
    if is_remote(storage):
        return normalize(storage)
    return str(Path(storage.removeprefix("file://")).expanduser().resolve())


def _exp_path(exp_dir: str | Path) -> str:
    """A local experiment's resolved directory (which must exist), or a bucket URI normalized;
    whether something is stored under the URI is checked when it is opened (one listing)."""
    exp = str(exp_dir)
    if is_remote(exp):
        return normalize(exp)
    path = Path(exp.removeprefix("file://")).expanduser().resolve()
    if not path.is_dir():
        raise TuneHandError(f"{path}: no such experiment directory")
    return str(path)


def _write_text(path: str, text: str) -> None:
    if is_remote(path):
        write_text(path, text)
        return
    from .io import atomic_write

    os.chmod(atomic_write(Path(path.removeprefix("file://")), lambda f: f.write(text), mode="w"), 0o644)


def _check_weights(spec: Spec) -> None:
    """On a local sweep, the ImageNet weights any trial can ask for exist here: one line before
    Ray starts instead of the same error in every trial. (On a cluster the nodes' image holds
    them, and the driver's machine need not.)"""
    from .model.encoder import missing_weights_message

    def values(key: str) -> list[Any]:
        param = spec.param(key)
        if param is not None and param.values is not None:
            return list(param.values)
        return [spec.fixed[key] if key in spec.fixed else C.get(spec.base, key)]

    if not any(values("model.pretrained")):
        return
    for encoder in values("model.encoder"):
        for weights in values("model.weights"):
            problem = missing_weights_message(encoder, weights)
            if problem:
                raise ConfigError(f"{spec.source}: {problem}")


def _check_data(data_dir: str | Path | None, remote: bool = False) -> str:
    """The dataset's absolute path; trials read it at the same path on every node. With a remote
    cluster the driver may not see it, so a missing dataset is then only a warning."""
    if data_dir is None:
        raise ConfigError("--data: a sweep needs a dataset directory (FreiHAND layout)")
    path = Path(data_dir).expanduser().resolve()
    if not (path / "training_K.json").is_file():
        if not remote:
            raise DataError(f"{path}: not a FreiHAND-layout dataset (no training_K.json)")
        print(f"tune-hand: warning: {path} is not a dataset on this machine; the trials must find it on theirs",
              file=sys.stderr)
    return str(path)
