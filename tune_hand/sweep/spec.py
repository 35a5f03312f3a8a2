"""The typed sweep spec: what to search, how long, on what; and its identity (hash, diff).

A spec is a YAML file (shipped ones live in `search_spaces/` and are found by name):

    name: quick
    base: small                      # a preset, a config YAML path, or an inline config mapping
    fixed:                           # applied to every trial, `section.key: value`
      data.num_workers: 0
    space:                           # searched, in this order (Optuna's define-by-run order)
      optim.lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
      model.channels: {type: categorical, values: [16, 32]}
      model.blocks: {type: int, low: 2, high: 3}
      augment.rotation_prob: {type: categorical, values: [0.0, 1.0]}
      augment.rotation_deg: {type: float, low: 30, high: 180, step: 30,
                             when: {augment.rotation_prob: 1.0}}
      milestones.first: {type: float, low: 0.5, high: 0.8}
      milestones.second: {type: float, low: 0.8, high: 0.95}
    metric: pa_mpjpe_mm              # validation metric; mode min
    mode: min
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2, max_epochs: 4}   # see "Schedulers"
    sampler: tpe                     # Optuna's TPE (default); random, gp, cmaes, qmc
    num_samples: 6
    max_concurrent_trials: 2
    resources: {gpu: 1, cpu: 1}      # per trial; no GPU in the cluster -> CPUs only, with a warning
    seed: 0
    max_failures: 1                  # Ray FailureConfig: retries of a crashed trial
    budget: {hours: 8}               # optional: resource-hours (GPU-hours, or CPU-hours without GPUs)

Parameter types: `categorical` (values), `int` (low, high, optional step), `float` (low, high,
optional step), `loguniform` (low > 0, high). `when: {key: value or [values]}` makes a
parameter conditional on an EARLIER categorical parameter; when the condition does not hold the
parameter is not sampled and the trial keeps the base/fixed value.

Milestones are fractions of the epoch budget: `milestones.first` and `milestones.second` (both or
neither; in the space or in `fixed`) are numbers in (0, 1). A trial's `optim.milestones` are
round(f * epochs) for both, clamped to [1, epochs] and sorted, the second bumped by one epoch when
both land on the same epoch. Without them the trial keeps the base config's `optim.milestones`.

The epoch budget is `scheduler.max_epochs` (the trial's `optim.epochs`; default: the base/fixed
`optim.epochs`); it cannot be searched.

Schedulers (`scheduler.type`; every type takes `max_epochs`, and a key its type does not take
is an error; tune_hand/sweep/schedulers/ holds one file per scheduler):
    asha       grace_period (1), reduction_factor (3)                  ASHA (the default)
    hyperband  grace_period, reduction_factor, brackets (all that fit)  asynchronous Hyperband
    median     grace_period (1)                                        the median stopping rule
    pbt        perturbation_interval (max_epochs // 10, at least 1), quantile (0.25),
               resample_probability (0.25)                             Population Based Training
    fifo       (none; grace_period/reduction_factor accepted and unused, as older sweeps stored them)
PBT mutates only the parameters `pbt_mutable` names, and takes sampler random (its default) or qmc.

Samplers (`sampler`, Optuna's, seeded; tune_hand/sweep/searcher.py): tpe (multivariate, constant
liar), random, gp (Gaussian process), cmaes (CMA-ES: int/float/loguniform parameters; categorical
and conditional ones drawn at random), qmc (scrambled Sobol).

    spec = load_spec("quick")                 # tune_hand.sweep.parse: a shipped spec or a path
    cfg = trial_config(spec, {"optim.lr": 1e-3, "model.channels": 16, ...})   # tune_hand.sweep.space
    space = search_space(spec)                # OptunaSearch(space=space, ...)
    spec_hash(spec), spec_diff(old.to_dict(), new.to_dict())

The dataclasses here are pickled inside Ray's searcher state (the define-by-run partial holds
the Spec): add fields only with defaults, and derive new views (like `objective`) as properties.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ADDED_KEYS, Config
from ..objective import Objective

MILESTONE_KEYS = ("milestones.first", "milestones.second")
PARAM_TYPES = ("categorical", "int", "float", "loguniform")
SCHEDULERS = ("asha", "hyperband", "median", "pbt", "fifo")
SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc")
METRICS = ("pa_mpjpe_mm", "rr_mpjpe_mm", "mpjpe_mm", "train_loss")
SPEC_KEYS = ("name", "description", "base", "fixed", "space", "metric", "mode", "scheduler", "sampler",
             "num_samples", "max_concurrent_trials", "resources", "seed", "max_failures", "budget")
PARAM_KEYS = ("type", "values", "low", "high", "step", "when")
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "max_epochs", "brackets", "perturbation_interval",
                  "quantile", "resample_probability")
# The keys each scheduler type takes besides `type` and `max_epochs`.
SCHEDULER_TAKES = {"asha": ("grace_period", "reduction_factor"),
                   "hyperband": ("grace_period", "reduction_factor", "brackets"),
                   "median": ("grace_period",),
                   "pbt": ("perturbation_interval", "quantile", "resample_probability"),
                   "fifo": ()}
# What PBT may mutate: training hyperparameters a checkpoint can continue under (schedulers/pbt.py).
PBT_MUTABLE = ("optim.", "augment.", "milestones.")
RESOURCE_KEYS = ("gpu", "cpu")
# Set per trial by the sweep itself, never by the spec.
NOT_SEARCHABLE = ("optim.epochs", "data.dir")


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    values: tuple | None = None
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    when: tuple[tuple[str, tuple], ...] = ()  # ((earlier key, allowed values), ...)
    integer: bool = False  # int / loguniform on an integer field: suggest_int

    def active(self, sampled: dict[str, Any]) -> bool:
        return all(k in sampled and sampled[k] in allowed for k, allowed in self.when)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.values is not None:
            out["values"] = list(self.values)
        for name in ("low", "high", "step"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.when:
            out["when"] = {k: (list(v) if len(v) > 1 else v[0]) for k, v in self.when}
        return out


@dataclass
class Scheduler:
    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 3
    max_epochs: int = 1
    brackets: int = 1  # hyperband
    perturbation_interval: int = 1  # pbt, in epochs
    quantile: float = 0.25  # pbt
    resample_probability: float = 0.25  # pbt

    def to_dict(self) -> dict[str, Any]:
        """The keys its type takes. `asha` and `fifo` keep the four keys every earlier version
        wrote (fifo's two unused ones included), so stored sweeps keep their hash."""
        if self.type in ("asha", "fifo"):
            keys: tuple[str, ...] = ("grace_period", "reduction_factor")
        else:
            keys = SCHEDULER_TAKES[self.type]
        out: dict[str, Any] = {"type": self.type, **{k: getattr(self, k) for k in keys}}
        out["max_epochs"] = self.max_epochs
        return out


def hyperband_brackets(max_epochs: int, grace_period: int, reduction_factor: float) -> int:
    """How many Hyperband brackets have a rung: Ray's `_Bracket` gives bracket s
    int(log(max/grace) / log(reduction) - s + 1) rungs."""
    return max(1, int(math.log(max_epochs / grace_period) / math.log(reduction_factor) + 1))


def pbt_mutable(space: tuple[Param, ...]) -> list[Param]:
    """The parameters PBT mutates: `optim.*`, `augment.*` and `milestones.*` ones that are not
    conditional and that no other parameter is conditional on (schedulers/pbt.py says why)."""
    conditions = {key for p in space for key, _ in p.when}
    return [p for p in space if p.key.startswith(PBT_MUTABLE) and not p.when and p.key not in conditions]


@dataclass
class Spec:
    name: str
    base: Config  # the resolved base config (preset, file or inline), without `fixed`
    fixed: dict[str, Any] = field(default_factory=dict)
    space: tuple[Param, ...] = ()
    metric: str = "pa_mpjpe_mm"
    mode: str = "min"
    scheduler: Scheduler = field(default_factory=Scheduler)
    sampler: str = "tpe"  # an Optuna sampler by name (SAMPLERS; searcher.py builds it)
    num_samples: int = 10
    max_concurrent_trials: int | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"gpu": 1, "cpu": 1})
    seed: int = 0
    max_failures: int = 1
    description: str = ""
    source: str = "spec"  # where it was read from, for messages only
    budget_hours: float | None = None  # `budget: {hours: H}`; not part of the hash (budget.py)

    @property
    def max_epochs(self) -> int:
        return self.scheduler.max_epochs

    @property
    def objective(self) -> Objective:
        """What the sweep ranks trials by (every min/max decision asks this)."""
        return Objective.single(self.metric, self.mode)

    def param(self, key: str) -> Param | None:
        return next((p for p in self.space if p.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        """The self-contained form (base inlined) that is stored with an experiment and hashed."""
        return {
            "name": self.name,
            "description": self.description,
            "base": self.base.to_dict(),
            "fixed": dict(self.fixed),
            "space": {p.key: p.to_dict() for p in self.space},
            "metric": self.metric,
            "mode": self.mode,
            "scheduler": self.scheduler.to_dict(),
            # Only when not the default, so that sweeps stored before the key existed keep their hash.
            **({"sampler": self.sampler} if self.sampler != "tpe" else {}),
            "num_samples": self.num_samples,
            "max_concurrent_trials": self.max_concurrent_trials,
            "resources": dict(self.resources),
            "seed": self.seed,
            "max_failures": self.max_failures,
            **({"budget": {"hours": self.budget_hours}} if self.budget_hours is not None else {}),
        }

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from ..io import atomic_write

            atomic_write(path, lambda f: f.write(text), mode="w")
        return text



# -- hashing -------------------------------------------------------------------------------
def _without_added_defaults(d: dict[str, Any]) -> dict[str, Any]:
    """The `to_dict()` form with config keys newer than stored sweeps dropped where they hold
    their neutral value (config.ADDED_KEYS): the form an older tune-hand wrote."""
    d = {**d, "base": {sec: dict(v) if isinstance(v, dict) else v for sec, v in d.get("base", {}).items()}}
    for dotted, neutral in ADDED_KEYS.items():
        section, key = dotted.split(".")
        values = d["base"].get(section)
        if isinstance(values, dict) and key in values and values[key] == neutral:
            del values[key]
    return d


def spec_hash(spec: Spec) -> str:
    """A short stable hash of everything that decides the trials (base inlined; space order kept)."""
    d = _without_added_defaults(spec.to_dict())
    d.pop("description")
    d.pop("budget", None)  # how long to search, not what: a new budget continues the same sweep
    d["space"] = [[k, v] for k, v in d["space"].items()]  # sampling order matters; keep it
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def spec_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> list[str]:
    """What changed between two `Spec.to_dict()` forms: ["space.optim.lr.high: 0.003 -> 0.01", ...]."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict) and d:
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: d}

    a, b = (flat({k: v for k, v in _without_added_defaults(d).items() if k not in ("description", "budget")})
            for d in (old, new))
    changes = [f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in sorted(a.keys() | b.keys())
               if a.get(k, "(none)") != b.get(k, "(none)")]
    if not changes and list(old.get("space", {})) != list(new.get("space", {})):
        changes = [f"space order: {list(old['space'])} -> {list(new['space'])}"]
    if len(changes) > limit:
        changes = changes[:limit] + [f"... {len(changes) - limit} more"]
    return changes

