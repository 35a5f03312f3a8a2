"""The sweep driver: Ray Tune + Optuna + ASHA over a spec, started or resumed.

    info = run_search("quick", data_dir="data/", storage="sweeps", name="q1")
    info = resume_search("sweeps/q1")

It builds a `Tuner` from the spec (searcher: `searcher.py`, scheduler: `schedulers/`,
progress: `live_table.py`, trial: `trainables.hand_pose`), runs it on a local Ray or on
`address`, and summarises what the sweep left in the experiment directory (`experiment.py`),
read back with the Ray-free readers (`results.py`).

Ray is imported inside the functions that start or resume a sweep, after the local Ray's
authentication mode is set (Ray reads it when it is imported).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import config as C
from ..errors import ConfigError, DataError, TuneHandError
from .budget import BUDGET_KEY, BudgetTracker, budget_guard, check_budget
from .experiment import (check_name, check_restorable, check_unchanged, exp_path, has_run, open_experiment,
                         read_experiment, storage_path, sweep_meta, write_experiment, write_meta)
from .lock import DriverLock
from .parse import load_spec, with_overrides
from .reaper import Reaper
from .results import load_status, state_counts, status_of
from .signing import Signer, start_signing, verify_experiment
from .snapshots import signed_snapshots
from .spec import Spec
from .storage import display, join

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
    cost: dict[str, Any] | None = None
    budget_spent: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- running -------------------------------------------------------------------------------
def run_search(spec: Spec | str | Path, data_dir: str | Path, storage: str | Path | None = None,
               name: str | None = None, address: str | None = None, samples: int | None = None,
               overrides: list[str] | None = None, key_file: str | Path | None = None,
               budget_hours: float | None = None) -> ExperimentInfo:
    """Start a sweep; blocks until every trial ended (or Ctrl-C, after which `resume` continues).

    Submitting the same sweep again (same name, spec and dataset: a requeued batch job, a
    re-run command) resumes it; a different spec or dataset under an existing name is refused.
    One driver per experiment: a second one fails at once, naming the first (`lock.py`).
    Every state file Ray may unpickle on a resume is signed with the user's key (`key_file`,
    default $TUNE_HAND_KEY_FILE or ~/.config/tune-hand/key, made on first use: `signing.py`).
    `budget_hours` (or the spec's `budget: {hours: H}`) caps the resource-hours (`budget.py`).
    """
    if name is not None:
        check_name(name)
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if overrides or samples is not None:
        spec = with_overrides(spec, overrides, samples)
    check_budget(budget_hours)
    data_dir = _check_data(data_dir, remote=address is not None)
    if address is None:
        _check_weights(spec)
    name = name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp = join(storage_path(storage), name)
    if has_run(exp):  # a sweep that cannot resume is refused before the lock is touched
        DriverLock(exp).check_free()
        check_unchanged(exp, read_experiment(exp)[1], spec)
        check_restorable(exp)
        verify_experiment(exp, key_file)
    with DriverLock(exp):
        if has_run(exp):
            _, stored = read_experiment(exp)
            check_unchanged(exp, stored, spec)
            if stored.get("data_dir") != data_dir:
                raise TuneHandError(f"{display(exp)}: this sweep runs on {stored.get('data_dir')}, not {data_dir}; "
                                    f"if the dataset moved, `tune-hand resume {display(exp)} --data {data_dir}`")
            print(f"tune-hand: {display(exp)} already holds this sweep (spec hash {stored['spec_hash']}); "
                  "resuming it", file=sys.stderr)
            return _resume(exp, address, None, key_file, budget_hours)
        return start_experiment(storage_path(storage), name, spec, data_dir, address, key_file, budget_hours)


def start_experiment(storage: str, name: str, spec: Spec, data_dir: str, address: str | None, key_file, budget_hours,
                     extra_meta: dict[str, Any] | None = None, ray_samples: int | None = None,
                     prepare=None, setup=None) -> ExperimentInfo:
    """Create STORAGE/NAME (the caller holds its lock) and run its Tuner. For a fork
    (`fork.py`): `ray_samples` is the trials Ray runs beside the carried ones, `setup(exp)` writes
    the carried trials after our files, `prepare(searcher)` warm-starts the searcher, and
    `extra_meta["continue_from"]` names the trials that go on from the parent's checkpoints."""
    exp = join(storage, name)
    signer = start_signing(exp, key_file)  # a key that cannot be used stops the sweep before anything is written
    meta = {**sweep_meta(spec, name, data_dir), **(extra_meta or {}),
            BUDGET_KEY: budget_hours if budget_hours is not None else spec.budget_hours}
    write_experiment(exp, spec, meta)
    if setup is not None:
        setup(exp)
    start = time.perf_counter()
    tracker = BudgetTracker(meta[BUDGET_KEY], resources=spec.resources)
    if ray_samples == 0:
        return _summary(exp, meta, 0.0, tracker)
    with _ray_session(address):
        tracker.resources = trial_resources(spec, _cluster_gpus(), local=address is None, warn=False)
        tuner = _build_tuner(spec, data_dir, storage, name, meta, local=address is None, num_samples=ray_samples,
                             prepare=prepare)
        signer.sign_stored("tuner.pkl")  # Ray wrote it into the experiment as the Tuner was built
        _fit(tuner, exp, signer, tracker)
    return _summary(exp, meta, time.perf_counter() - start, tracker)


def resume_search(exp_dir: str | Path, address: str | None = None, data_dir: str | Path | None = None,
                  key_file: str | Path | None = None, budget_hours: float | None = None) -> ExperimentInfo:
    """Continue an interrupted sweep from its storage: unfinished and errored trials resume from
    their last checkpoints; the searcher's state is restored; new trials fill num_samples.
    Before Ray reads anything, every file it may unpickle must match the sweep's signatures
    (`signing.verify_experiment`); the resumed sweep goes on signing its snapshots. A spent
    budget trains nothing; only a new `budget_hours` raises it."""
    check_budget(budget_hours)
    exp = exp_path(exp_dir)
    # Refusals (another spec, damaged or unsigned state) come before the lock is touched, and
    # are checked again under it.
    DriverLock(exp).check_free()
    spec, meta = read_experiment(exp)
    check_unchanged(exp, meta, spec)
    check_restorable(exp)
    verify_experiment(exp, key_file)
    with DriverLock(exp):
        return _resume(exp, address, data_dir, key_file, budget_hours)


def _resume(exp: str, address, data_dir, key_file, budget_hours) -> ExperimentInfo:
    spec, meta = read_experiment(exp)
    check_unchanged(exp, meta, spec)
    data_dir = _check_data(data_dir or meta["data_dir"], remote=address is not None)
    check_restorable(exp)  # never a silent restart from scratch
    signer = verify_experiment(exp, key_file)
    if budget_hours is not None and budget_hours != meta.get(BUDGET_KEY):
        meta = {**meta, BUDGET_KEY: budget_hours}
        write_meta(exp, meta)  # before Ray stages our files for its snapshots
    budget = meta.get(BUDGET_KEY, spec.budget_hours)
    cost = load_status(exp)["cost"]
    tracker = BudgetTracker(budget, spent_hours=cost["resource_hours"], resources=spec.resources, unit=cost["unit"])
    if tracker.spent:
        return _summary(exp, meta, 0.0, tracker)
    from ray import tune

    start = time.perf_counter()
    with _ray_session(address):
        tracker.resources = trial_resources(spec, _cluster_gpus(), local=address is None, warn=False)
        trainable = _trainable(spec, data_dir, local=address is None, continue_from=meta.get("continue_from"))
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_errored=True)
        _fit(tuner, exp, signer, tracker)
    if data_dir != meta.get("data_dir"):
        # `resume --data NEW`: the sweep now runs on NEW (for `report`, and a re-submitted `search
        # --data NEW`). Written after the run: Ray re-syncs its staged copy of our files at the end.
        meta = {**meta, "data_dir": data_dir}
        write_meta(exp, meta)
    return _summary(exp, meta, time.perf_counter() - start, tracker)


def _fit(tuner, exp: str, signer: Signer, tracker: BudgetTracker) -> None:
    """Run the trials, signing every experiment snapshot, under the budget. Ray Tune handles
    the first Ctrl-C itself (it saves the experiment state and returns); a second one raises
    KeyboardInterrupt through here."""
    quiet = _QuietBudgetStop(tracker)
    ray_log = logging.getLogger("ray.tune.tune")
    ray_log.addFilter(quiet)
    try:
        with signed_snapshots(signer), budget_guard(tracker):
            tuner.fit()
    except KeyboardInterrupt:
        print(f"tune-hand: interrupted; continue with `tune-hand resume {display(exp)}`", file=sys.stderr)
        raise
    finally:
        ray_log.removeFilter(quiet)


class _QuietBudgetStop(logging.Filter):
    """Drop Ray's "stop signal received / resume with Tuner.restore" lines when the budget ended
    the fit (through Ray's SIGUSR1 path): the driver says what happened and what to type."""

    def __init__(self, tracker: BudgetTracker):
        super().__init__()
        self.tracker = tracker

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.tracker.interrupted


def _cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0)


def _build_tuner(spec: Spec, data_dir: str, storage: str, name: str, meta: dict[str, Any], local: bool = True,
                 num_samples: int | None = None, prepare=None):
    from ray import tune

    from .live_table import LiveTable
    from .schedulers import build_scheduler
    from .searcher import build_searcher

    searcher = build_searcher(spec, spec.max_concurrent_trials or _cluster_slots(spec, local))
    if prepare is not None:
        prepare(searcher)
    scheduler, callbacks = build_scheduler(spec)
    callbacks = [LiveTable(_table_header(spec, meta, display(join(storage, name)))), *callbacks]
    return tune.Tuner(
        _trainable(spec, data_dir, local, continue_from=meta.get("continue_from")),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=spec.num_samples if num_samples is None else num_samples,
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


def _trainable(spec: Spec, data_dir: str, local: bool = True, continue_from: dict | None = None):
    """The trainable with its spec and dataset bound (and a fork's continued trials), sized by
    the spec's resources."""
    import ray
    from ray import tune

    from trainables.hand_pose import train_hand_pose

    extra = {"continue_from": continue_from} if continue_from else {}
    bound = tune.with_parameters(train_hand_pose, spec=spec.to_dict(), data_dir=data_dir, **extra)
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
        self.reaper: Reaper | None = None

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
                # "local": always a new, private Ray of our own. Without it ray.init attaches to a
                # cluster that Ray's current-cluster pointer file names (a stale one left by a killed
                # `ray start` failed with a raw ValueError); `--address auto` is how to ask for that.
                # Listening on loopback only: no port of it is reachable from other machines.
                from .loopback import loopback_ray

                with loopback_ray() as loopback:
                    ray.init(address="local", num_cpus=os.cpu_count(), **kwargs, **loopback)
                _private_token_file()
                # Nothing of this Ray may outlive a SIGKILLed driver (see reaper.py).
                self.reaper = Reaper().__enter__()
            self.started = True
        # ResumableASHA asks for an experiment snapshot whenever a trial ends; Ray warns about
        # frequent snapshots, which here are deliberate.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        return self

    def __exit__(self, *exc):
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        if self.reaper is not None:
            self.reaper.close()
        return False


def _private_token_file() -> None:
    """Ray writes the local cluster's token to ~/.ray/auth_token readable by everyone (0644): make it 0600."""
    if os.environ.get("RAY_AUTH_MODE") != "token":
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser()
    if path.is_file() and path.stat().st_mode & 0o077:
        path.chmod(0o600)


def _summary(exp: str, meta: dict, seconds: float, tracker: BudgetTracker | None = None) -> ExperimentInfo:
    """What the sweep left in storage (local or bucket, read once), with a hint to resume
    when Ray returned before every trial ended (a Ctrl-C, a failure, a spent budget)."""
    with open_experiment(exp) as opened:
        status = status_of(opened)
    spent = tracker is not None and tracker.spent
    if spent:
        tracker.spent_hours = max(tracker.spent_hours, status["cost"]["resource_hours"])
        print(tracker.message(display(exp)), file=sys.stderr)
    elif sum(t["state"] not in ("pending", "running") for t in status["trials"]) < status["num_samples"]:
        print(f"tune-hand: the sweep stopped before all trials ended; continue with `tune-hand resume "
              f"{display(exp)}`", file=sys.stderr)
    states = state_counts(status["trials"])
    return ExperimentInfo(path=display(exp), name=meta["name"], spec_hash=meta["spec_hash"],
                          trials=len(status["trials"]), states=states, best=status["best"], seconds=seconds,
                          cost=status["cost"], budget_spent=spent)


def _check_weights(spec: Spec) -> None:
    """On a local sweep, the ImageNet weights any trial can ask for exist here: one line before
    Ray starts instead of the same error in every trial. (On a cluster the nodes' image holds
    them, and the driver's machine need not.)"""
    from ..model.encoder import missing_weights_message

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
