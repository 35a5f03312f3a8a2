"""The Ray-free readers of an experiment: every trial's state and best, the best checkpoint.

    status = load_status("sweeps/q1")          # trials, states, bests; no Ray, no cluster
    export_best("sweeps/q1", "best/")          # config.yaml, checkpoint.pt, metrics.json, provenance.json
    rows = trialtrial_rows("sweeps/q1")          # trial_id -> its reported rows, epoch order
    print(format_status(status))

Each takes a local directory, a bucket URI or an experiment opened with `open_experiment`
(open it once when calling several readers: each reader given a path opens its own). They
read what Ray leaves on disk: each trial's params.json and result.json (one JSON row per
reported epoch), error.txt, and the newest experiment_state-*.json for Ray's trial states.
Every "which is better" goes through the spec's Objective.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..checkpoint import FILENAME, checkpoint_config, load_checkpoint
from ..errors import TuneHandError
from ..io import atomic_directory, write_json
from ..objective import Objective
from .budget import BUDGET_KEY, format_hours, report_lines, resource_hours, sweep_cost, trial_cost
from .experiment import CARRIED_FILE, Experiment, open_experiment, read_experiment, read_json
from .spec import Spec
from .storage import ExperimentDir, display, fetch_file, is_remote, join

# Ray's trial status -> ours, for trials that have not ended.
_STATE_NAMES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "pending", "ERROR": "error"}
STATES = ("pending", "running", "finished", "stopped early", "diverged", "error")


def load_status(exp_dir: Experiment) -> dict[str, Any]:
    """Every trial of an experiment and the best, from its files alone (no Ray, no cluster).

    A trial's state: finished (ran the whole budget), stopped early (ASHA), diverged, error,
    running, pending. `best_metric` is the trial's best reported value (diverged epochs
    excluded); `best` is the best trial-epoch of the experiment (Ray's scope="all").
    """
    with open_experiment(exp_dir) as opened:
        return status_of(opened)


def status_of(opened: ExperimentDir) -> dict[str, Any]:
    """`load_status` of an experiment already opened."""
    exp = opened.path
    spec, meta = read_experiment(opened)
    objective = spec.objective
    ray_states = ray_trial_states(exp)
    trials, costs, reports = [], [], []
    for trial_dir in trial_dirs(exp):
        rows = trial_rows(trial_dir)
        params = read_json(trial_dir / "params.json") or {}
        trial_id = rows[-1]["trial_id"] if rows else _trial_id_from_dir(trial_dir, ray_states)
        best_row = objective.best_row(rows)
        epochs = max((int(r.get("epoch", r.get("training_iteration", 0))) for r in rows), default=0)
        carried = carried_from(trial_dir)
        lines = report_lines(trial_dir)
        cost = trial_cost(lines, spec.resources)
        if carried is None:  # a carried trial's cost was paid by the experiment it comes from
            costs.append(cost)
            reports.append(lines)
        trials.append({
            "trial_id": trial_id,
            "state": _state(ray_states.get(trial_id), rows, trial_dir, spec.max_epochs),
            "epochs": epochs,
            "best_metric": best_row[spec.metric] if best_row else None,
            "best_epoch": int(best_row["epoch"]) if best_row else None,
            "config": params,
            "dir": trial_dir.name,
            "resource_hours": 0.0 if carried else resource_hours(cost["cpu_hours"], cost["gpu_hours"]),
            **({"carried_from": carried["carried_from"]} if carried else {}),
        })
    for trial_id, state in ray_states.items():  # trials Ray created but that never wrote a file
        if not any(t["trial_id"] == trial_id for t in trials):
            trials.append({"trial_id": trial_id, "state": _STATE_NAMES.get(state, state.lower()), "epochs": 0,
                           "best_metric": None, "best_epoch": None, "config": {}, "dir": None})
    best = objective.best_of(trials, lambda t: t["best_metric"])
    return {"experiment": display(opened.uri), "name": meta.get("name"), "spec_name": spec.name,
            "spec_hash": meta.get("spec_hash"), "metric": spec.metric, "mode": spec.mode, "max_epochs": spec.max_epochs,
            "num_samples": spec.num_samples, "space": [p.key for p in spec.space], "trials": trials,
            "cost": sweep_cost(costs, reports, meta.get(BUDGET_KEY, spec.budget_hours)),
            **({"forked_from": meta["forked_from"]} if meta.get("forked_from") else {}),
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
            source = _fetch_checkpoint(exp, rel, tmp / FILENAME)
            state = load_checkpoint(source)
            cfg = checkpoint_config(state, source)
            provenance = {
                "experiment": display(exp.uri), "trial_id": row["trial_id"], "trial_dir": trial_dir.name,
                "epoch": int(state["epoch"]), "checkpoint": rel,
                "metric": spec.metric, "mode": spec.mode, "value": row[spec.metric],
                "spec_hash": meta.get("spec_hash"), "spec_name": spec.name, "config_digest": cfg.digest(),
                "params": read_json(trial_dir / "params.json") or {},
                **({"carried_from": carried_from(trial_dir)["carried_from"]} if carried_from(trial_dir) else {}),
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
        return trial_dir, row, _fetch_checkpoint(exp, rel)


def _best_checkpoint(exp: ExperimentDir, spec: Spec) -> tuple[Path, dict[str, Any], str]:
    """(local trial directory, result row, the checkpoint: a path relative to the experiment, or
    for a trial carried by `fork` its location in the parent experiment)."""
    objective = spec.objective
    kept = ((trial_dir, row, loc) for trial_dir in trial_dirs(exp.path) for row in trial_rows(trial_dir)
            if objective.scored(row) and row.get("checkpoint_dir_name")
            for loc in [_checkpoint_location(exp, trial_dir, row)] if loc is not None)
    best = objective.best_of(kept, lambda item: item[1][spec.metric])
    if best is None:
        raise TuneHandError(f"{display(exp.uri)}: no trial has reported {spec.metric} with a checkpoint yet")
    return best


def _checkpoint_location(exp: ExperimentDir, trial_dir: Path, row: dict[str, Any]) -> str | None:
    carried = carried_from(trial_dir)
    if carried is None:
        rel = f"{trial_dir.name}/{row['checkpoint_dir_name']}/{FILENAME}"
        return rel if exp.has(rel) else None
    loc = join(carried["experiment"], carried["trial_dir"], row["checkpoint_dir_name"], FILENAME)
    return loc if is_remote(loc) or Path(loc).is_file() else None


def _fetch_checkpoint(exp: ExperimentDir, loc: str, dest: Path | None = None) -> Path:
    """The checkpoint at `loc` (`_checkpoint_location`) as a local file (at `dest`, if given)."""
    if not (is_remote(loc) or Path(loc).is_absolute()):
        return exp.fetch(loc, dest)
    if dest is None:
        if not is_remote(loc):
            return Path(loc)
        dest = exp.path / ".carried" / loc.rsplit("/", 3)[-3] / FILENAME
        dest.parent.mkdir(parents=True, exist_ok=True)
    return fetch_file(loc, dest)


def trial_results(exp_dir: Experiment) -> dict[str, list[dict[str, Any]]]:
    """trial_id -> its reported rows, one per epoch in epoch order (from storage; no Ray)."""
    out = {}
    with open_experiment(exp_dir) as exp:
        for trial_dir in trial_dirs(exp.path):
            rows = trial_rows(trial_dir)
            if rows:
                out[rows[-1]["trial_id"]] = rows
    return out



# -- reading Ray's files ---------------------------------------------------------------------
def trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").is_file())


def carried_from(trial_dir: Path) -> dict[str, Any] | None:
    """A trial carried from another experiment by `fork`: {carried_from, experiment, trial_dir}."""
    marker = trial_dir / CARRIED_FILE
    if not marker.is_file():
        return None
    data = read_json(marker)
    return data if isinstance(data, dict) and isinstance(data.get("carried_from"), str) else None


def trial_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """Every reported row of a trial (result.json holds one JSON object per line)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            epoch = int(row.get("epoch", row.get("training_iteration", 0)) or 0)
        except (ValueError, TypeError, AttributeError, RecursionError):  # a torn last line of a killed trial
            continue
        # A trial resumed from an older checkpoint (a driver killed between experiment snapshots)
        # reports some epochs again; the later report is the one its checkpoints belong to.
        by_epoch[epoch] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def ray_trial_states(exp: Path) -> dict[str, str]:
    """trial_id -> Ray's status (PENDING, RUNNING, TERMINATED, ERROR) from the newest experiment state."""
    # Newest by the timestamp in the name, as Ray chooses: Ray re-syncs older state files from its
    # staging directory after a restored run, so their mtimes say nothing.
    states = sorted(p.name for p in exp.glob("experiment_state-*.json"))
    if not states:
        return {}
    data = read_json(exp / states[-1]) or {}
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



def state_counts(trials: list[dict[str, Any]]) -> dict[str, int]:
    """{state: number of trials}, for summaries."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return counts


def format_status(status: dict) -> str:
    """A table of trials, best first, then the best trial-epoch (`tune-hand status`, the live table)."""
    trials = status["trials"]
    objective = Objective.single(status["metric"], status["mode"])
    lines = [f"{status['experiment']}: spec {status['spec_name']} (hash {status['spec_hash']}), "
             f"{status['metric']} ({status['mode']}), {len(trials)}/{status['num_samples']} trials: "
             + ", ".join(f"{n} {s}" for s, n in sorted(state_counts(trials).items()))]
    order = sorted(trials, key=lambda t: objective.sort_key(t["best_metric"]))
    lines.append(f"{'trial':<10} {'state':<14} {'epochs':>7} {'best':>9}  params")
    for t in order:
        metric = "-" if t["best_metric"] is None else f"{t['best_metric']:.3f}"
        params = " ".join(f"{k}={_short(v)}" for k, v in t["config"].items() if k in status.get("space", ()))
        carried = f"  (carried from {t['carried_from']})" if t.get("carried_from") else ""
        lines.append(f"{t['trial_id']:<10} {t['state']:<14} {t['epochs']:>3}/{status['max_epochs']:<3} "
                     f"{metric:>9}  {params}{carried}")
    best = status["best"]
    if best:
        lines.append(f"best: {best['trial_id']} {status['metric']}={best['best_metric']:.3f} "
                     f"at epoch {best['best_epoch']}")
    cost = status.get("cost")
    if cost:
        budget = "" if cost.get("budget_hours") is None else f" of a {format_hours(cost['budget_hours'])} budget"
        wall = f" (wall {format_hours(cost['wall_hours'])})" if "wall_hours" in cost else ""
        lines.append(f"cost: {format_hours(cost['resource_hours'])} {cost.get('unit', 'cpu').upper()}{budget}{wall}")
    return "\n".join(lines)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
