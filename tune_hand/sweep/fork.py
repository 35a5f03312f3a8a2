"""`fork`: a new experiment that starts from what an old one learnt (Ray-free planning).

    plan = plan_fork("sweeps/q1", spec=None, samples=5, epochs=4, overrides=[], data_dir=None)
    plan.carried      # trials whose result stands in the new sweep as it is (not rerun)
    plan.continued    # finished trials that go on from their last checkpoint to the new budget
    plan.warm         # every ended trial that lies in the new space, told to the new Optuna study
    plan.note         # why nothing was carried or told, when the old results are incomparable

A resumed Ray sweep cannot be edited (ray#30223, #33495), so a changed sweep is a new
experiment. What carries over, per trial of the old one (EXP):
- **warm start**: an ended trial (finished, stopped early, diverged) whose parameters lie in
  the new space is added to the new Optuna study before the first suggestion: COMPLETE with its
  best value when it finished its budget, else PRUNED with its per-epoch values (what our
  searcher tells Optuna about a live trial, `searcher.py`).
- **carry**: a finished trial whose effective config is unchanged (same base, fixed values,
  space values and epoch budget) is copied into the new experiment as a trial directory
  (params.json, result.json and a `tune_hand_carried.json` naming its origin; its checkpoints
  stay in EXP's storage and are read from there). It counts toward num_samples and shows in
  status, best, report and retrain.
- **continue** (`--epochs E` above EXP's budget): every trial that finished EXP's budget
  (not only those ASHA would promote: they all paid for the budget, and the new rungs judge
  them again) is queued first in the new study with its exact parameters. Its trial reports
  EXP's rows again (marked `replayed_from`), then trains from EXP's last checkpoint to E, with
  the LR milestones placed on E as for any trial of the new spec (as `retrain --epochs`).
Old results are incomparable, and nothing is carried or told (one note says why), when the
dataset, the metric or mode, the base config or a fixed value (the target frame among them)
differ.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TuneHandError
from ..io import atomic_write
from .experiment import CARRIED_FILE, Experiment, open_experiment, read_experiment, read_json
from .parse import load_spec, with_overrides
from .results import carried_from, status_of, trial_dirs, trial_rows
from .space import distributions, trial_config
from .spec import Spec
from .storage import display, fetch_file, join

ENDED = ("finished", "stopped early", "diverged")


@dataclass
class Warm:
    """One old trial as the new Optuna study hears it."""
    params: dict[str, Any]
    distributions: dict[str, Any]
    state: str  # "complete" or "pruned"
    value: float | None
    intermediate: dict[int, float]
    origin: str  # "EXP-name/trial_id"


@dataclass
class Carry:
    origin: str
    trial_dir: str  # its directory name in EXP
    source: str  # EXP's location
    params: dict[str, Any]


@dataclass
class Continue:
    origin: str
    params: dict[str, Any]  # the sampled parameters, queued exactly in the new study
    rows: list[dict[str, Any]]  # EXP's rows, replayed before training goes on
    checkpoint: str  # EXP's last checkpoint of the trial (a path or URI)
    epoch: int
    digest: str  # the new trial config's digest, how the trainable finds this entry


@dataclass
class ForkPlan:
    source: str
    source_name: str
    spec: Spec
    data_dir: str
    carried: list[Carry] = field(default_factory=list)
    continued: list[Continue] = field(default_factory=list)
    warm: list[Warm] = field(default_factory=list)
    note: str | None = None


def plan_fork(src: Experiment, spec: str | Spec | None = None, samples: int | None = None,
              epochs: int | None = None, overrides: list[str] | None = None,
              data_dir: str | None = None) -> ForkPlan:
    """What a fork of `src` carries, continues and tells (module docstring)."""
    with open_experiment(src) as opened:
        old, meta = read_experiment(opened)
        new = old if spec is None else (spec if isinstance(spec, Spec) else load_spec(spec))
        sets = list(overrides or []) + ([f"optim.epochs={epochs}"] if epochs is not None else [])
        if sets or samples is not None:
            new = with_overrides(new, sets, samples)
        if epochs is not None and epochs < old.max_epochs and spec is None:
            raise TuneHandError(f"--epochs {epochs}: below {display(opened.uri)}'s budget of {old.max_epochs}; "
                                "a fork continues trials, it cannot shorten them (use --spec for a new sweep)")
        if spec is None:
            # The parent's sampler seed would draw the parent's configs again (Optuna's random
            # start-up continues the same stream): a fork samples with a seed of its own.
            new = dataclasses.replace(new, seed=(new.seed + 1) % (2 ** 31))
        data = data_dir or meta.get("data_dir")
        plan = ForkPlan(source=opened.uri, source_name=meta.get("name") or opened.uri.rstrip("/").rsplit("/", 1)[-1],
                        spec=new, data_dir=data)
        plan.note = _incomparable(old, new, meta.get("data_dir"), data)
        if plan.note:
            return plan
        status = status_of(opened)
        by_dir = {t["dir"]: t for t in status["trials"] if t.get("dir")}
        for trial_dir in trial_dirs(opened.path):
            trial = by_dir.get(trial_dir.name)
            if trial is None or trial["state"] not in ENDED:
                continue
            _plan_trial(plan, old, new, opened, trial_dir, trial)
        # A fork with more carried trials than it samples keeps the best ones.
        if len(plan.carried) > new.num_samples:
            value = {c.origin: t["best_metric"] for t in status["trials"]
                     for c in plan.carried if c.origin.endswith("/" + t["trial_id"])}
            plan.carried = sorted(plan.carried, key=lambda c: new.objective.sort_key(value.get(c.origin))
                                  )[:new.num_samples]
        return plan


def _plan_trial(plan: ForkPlan, old: Spec, new: Spec, opened, trial_dir, trial: dict[str, Any]) -> None:
    rows = trial_rows(trial_dir)
    raw = read_json(trial_dir / "params.json") or {}
    params = {k: v for k, v in raw.items() if new.param(k) is not None}
    dists = distributions(new, params)
    if dists is None or not _same_config(trial_config(new, params),
                                         trial_config(old, {k: v for k, v in raw.items() if old.param(k) is not None})):
        return  # outside the new space, or a config the new spec would build differently
    carried = carried_from(trial_dir)
    origin = carried["carried_from"] if carried else f"{plan.source_name}/{trial['trial_id']}"
    values = {int(r["epoch"]): float(r[new.metric]) for r in rows
              if new.objective.scored(r) and r.get("epoch") is not None}
    finished = trial["state"] == "finished"
    plan.warm.append(Warm(params=params, distributions=dists, state="complete" if finished else "pruned",
                          value=trial["best_metric"] if finished else None, intermediate=values, origin=origin))
    if not finished:
        return
    if new.max_epochs == old.max_epochs:
        source = carried["experiment"] if carried else plan.source
        plan.carried.append(Carry(origin=origin, trial_dir=carried["trial_dir"] if carried else trial_dir.name,
                                  source=source, params=raw))
    elif new.max_epochs > old.max_epochs and not carried:
        last = max((r for r in rows if r.get("checkpoint_dir_name")), key=lambda r: int(r["epoch"]), default=None)
        if last is None or not opened.has(f"{trial_dir.name}/{last['checkpoint_dir_name']}/checkpoint.pt"):
            return
        plan.continued.append(Continue(
            origin=origin, params=params, rows=[r for r in rows if int(r["epoch"]) <= int(last["epoch"])],
            checkpoint=join(plan.source, trial_dir.name, last["checkpoint_dir_name"], "checkpoint.pt"),
            epoch=int(last["epoch"]), digest=trial_config(new, params).digest()))


def _same_config(a, b) -> bool:
    """The same trial but for its epoch budget (and the milestones placed on it)."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d["optim"] = {k: v for k, v in d["optim"].items() if k not in ("epochs", "milestones")}
    return da == db


def _incomparable(old: Spec, new: Spec, old_data: str | None, new_data: str | None) -> str | None:
    """Why results of `old` say nothing about `new`, or None."""
    if old_data != new_data:
        return f"other data ({old_data} -> {new_data})"
    if (old.metric, old.mode) != (new.metric, new.mode):
        return f"another objective ({old.metric} {old.mode} -> {new.metric} {new.mode})"
    if old.base.to_dict() != new.base.to_dict():
        changed = sorted(f"{s}.{k}" for s, v in new.base.to_dict().items() if isinstance(v, dict)
                         for k in v if old.base.to_dict().get(s, {}).get(k) != v[k])
        return f"another base config ({', '.join(changed[:4]) or 'its sections'})"
    if old.fixed != new.fixed:
        keys = sorted(k for k in old.fixed.keys() | new.fixed.keys() if old.fixed.get(k) != new.fixed.get(k))
        return f"other fixed values ({', '.join(f'{k}: {old.fixed.get(k)} -> {new.fixed.get(k)}' for k in keys[:4])})"
    return None


# -- running a fork ------------------------------------------------------------------------
def fork_search(src: str, name: str, spec: str | None = None, samples: int | None = None, epochs: int | None = None,
                overrides: list[str] | None = None, storage: str | None = None, address: str | None = None,
                data_dir: str | None = None, key_file: str | None = None, budget_hours: float | None = None):
    """Start NEW (STORAGE/NAME, default: beside `src`) from `src`'s results (module docstring)."""
    from .budget import check_budget
    from .driver import _check_data, start_experiment
    from .experiment import check_name, exp_path, has_run, storage_path
    from .lock import DriverLock

    check_name(name)
    check_budget(budget_hours)
    src = exp_path(src)
    plan = plan_fork(src, spec, samples, epochs, overrides, data_dir)
    data = _check_data(plan.data_dir, remote=address is not None)
    parent = src.rstrip("/").rsplit("/", 1)[0] if "://" in src else str(Path(src).parent)
    exp = join(storage_path(storage) if storage else parent, name)
    if exp.rstrip("/") == src.rstrip("/"):
        raise TuneHandError(f"--name {name}: that is {display(src)} itself; a fork is a new experiment")
    with DriverLock(exp):
        if has_run(exp) or _has_our_files(exp):
            raise TuneHandError(f"{display(exp)}: already exists; fork into a new --name (or `tune-hand resume` it)")
        if plan.note:
            print(f"tune-hand: fork: nothing carried or told from {display(src)}: {plan.note}", file=sys.stderr)
        else:
            print(f"tune-hand: fork of {display(src)}: {len(plan.carried)} trials carried, {len(plan.continued)} "
                  f"continued to {plan.spec.max_epochs} epochs, {len(plan.warm)} told to the new study",
                  file=sys.stderr)
        extra = {"forked_from": {"experiment": display(src), "name": plan.source_name, "carried": len(plan.carried),
                                 "continued": len(plan.continued), "warm_started": len(plan.warm),
                                 "note": plan.note}}
        if plan.continued:
            extra["continue_from"] = {c.digest: {"origin": c.origin, "checkpoint": c.checkpoint, "epoch": c.epoch,
                                                 "rows": c.rows} for c in plan.continued}
        return start_experiment(storage_path(storage) if storage else parent, name, plan.spec, data, address,
                                key_file, budget_hours, extra_meta=extra,
                                ray_samples=max(0, plan.spec.num_samples - len(plan.carried)),
                                prepare=lambda searcher: warm_start(searcher, plan),
                                setup=lambda new_exp: write_carried(new_exp, plan))


def _has_our_files(exp: str) -> bool:
    from .experiment import SPEC_FILE
    from .storage import is_remote, list_files

    if is_remote(exp):
        return SPEC_FILE in list_files(exp)
    return (Path(exp) / SPEC_FILE).exists()


def write_carried(exp: str, plan: ForkPlan) -> None:
    """Each carried trial as a trial directory of `exp`: its params.json and result.json, and
    where it comes from (its checkpoints stay in the parent's storage)."""
    for c in plan.carried:
        src = join(c.source, c.trial_dir)
        for name in ("params.json", "result.json"):
            with tempfile.TemporaryDirectory() as tmp:
                local = fetch_file(join(src, name), Path(tmp) / name)
                _write(join(exp, c.trial_dir, name), local.read_text())
        _write(join(exp, c.trial_dir, CARRIED_FILE), json.dumps(
            {"carried_from": c.origin, "experiment": c.source, "trial_dir": c.trial_dir}) + "\n")


def _write(location: str, text: str) -> None:
    from .storage import is_remote, write_text

    if is_remote(location):
        write_text(location, text)
    else:
        atomic_write(location, lambda f: f.write(text), mode="w")


def warm_start(searcher, plan: ForkPlan) -> None:
    """Tell the new Optuna study every old trial of the plan (before its first suggestion), and
    queue the continued trials' exact parameters first."""
    import optuna
    from optuna.trial import TrialState

    inner = getattr(searcher, "searcher", searcher)  # under Ray's ConcurrencyLimiter
    study = getattr(inner, "_ot_study", None)
    if study is None:
        raise TuneHandError("fork: this searcher has no Optuna study to warm-start")
    for w in plan.warm:
        study.add_trial(optuna.trial.create_trial(
            params=w.params, distributions=w.distributions,
            value=w.value if w.state == "complete" else None,
            intermediate_values=w.intermediate,
            state=TrialState.COMPLETE if w.state == "complete" else TrialState.PRUNED,
            user_attrs={"tune_hand_origin": w.origin}))
    for c in plan.continued:
        study.enqueue_trial(c.params, user_attrs={"tune_hand_continues": c.origin})
