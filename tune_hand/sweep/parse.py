"""A sweep spec from YAML: reading, validation, `--set` overrides; every problem is one line.

    spec = load_spec("quick")                       # a shipped spec by name, or a path
    spec = parse_spec(raw_mapping, source="my.yaml")
    spec = with_overrides(spec, ["model.channels=64"], samples=12)

The format is described in `tune_hand.sweep.spec`.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import yaml

from .. import config as C
from ..config import Config
from ..errors import ConfigError
from ..io import read_yaml
from .space import trial_config
from .spec import (METRICS, MILESTONE_KEYS, NOT_SEARCHABLE, PARAM_KEYS, PARAM_TYPES, RESOURCE_KEYS, SAMPLERS,
                   SCHEDULER_KEYS, SCHEDULER_TAKES, SCHEDULERS, SPEC_KEYS, Param, Scheduler, Spec, hyperband_brackets,
                   pbt_mutable)


def spec_names() -> list[str]:
    from search_spaces import SPEC_DIR

    return sorted(p.stem for p in Path(SPEC_DIR).glob("*.yaml"))


def spec_path(path_or_name: str | Path) -> Path:
    """A spec file: an existing path, else a shipped spec of that name."""
    from search_spaces import SPEC_DIR

    p = Path(path_or_name)
    if p.is_file():
        return p
    shipped = Path(SPEC_DIR) / f"{path_or_name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"{path_or_name}: no such sweep spec file or shipped spec (shipped: {', '.join(spec_names())})")


def load_spec(path_or_name: str | Path) -> Spec:
    """Read and validate a spec file or a shipped spec (`paper`, `quick`)."""
    path = spec_path(path_or_name)
    raw = read_yaml(path, "sweep spec")
    return parse_spec(raw, source=str(path), default_name=path.stem, base_dir=path.parent)


def _section(v, raw: dict, name: str, known) -> dict:
    """The spec's `name` mapping (empty if absent); a one-line error for a non-mapping or an unknown key."""
    section = raw.get(name) or {}
    if not isinstance(section, dict):
        v.fail(name, f"expected a mapping of {', '.join(known)}")
    for key in section:
        if key not in known:
            v.fail(f"{name}.{key}", f"unknown key (known: {', '.join(known)})")
    return section


def parse_spec(raw: Any, source: str = "spec", default_name: str = "sweep", base_dir: Path | None = None) -> Spec:
    """Validate a spec mapping; every problem is a one-line ConfigError naming `source` and the key."""
    v = _Validator(source)
    if not isinstance(raw, dict):
        v.fail("", f"expected a mapping of spec keys, got {type(raw).__name__}")
    for key in raw:
        if key not in SPEC_KEYS:
            v.fail(str(key), f"unknown key (known: {', '.join(SPEC_KEYS)})")

    name = v.typed("name", raw.get("name", default_name), str)
    description = v.typed("description", raw.get("description", "") or "", str)
    base = _resolve_base(v, raw.get("base"), base_dir)

    fixed_raw = raw.get("fixed") or {}
    if not isinstance(fixed_raw, dict):
        v.fail("fixed", "expected a mapping of section.key: value")
    fixed: dict[str, Any] = {}
    for key, value in fixed_raw.items():
        fixed[key] = _check_fixed(v, str(key), value)
    try:
        fixed_cfg = C.with_values(base, {k: x for k, x in fixed.items() if k not in MILESTONE_KEYS})
    except ConfigError as e:
        v.fail("fixed", str(e))

    sched_raw = _section(v, raw, "scheduler", SCHEDULER_KEYS)
    max_epochs = v.typed("scheduler.max_epochs", sched_raw.get("max_epochs", fixed_cfg.optim.epochs), int, minimum=1)
    if "optim.epochs" in fixed and "max_epochs" in sched_raw and fixed["optim.epochs"] != max_epochs:
        v.fail("fixed.optim.epochs", f"{fixed['optim.epochs']} differs from scheduler.max_epochs={max_epochs}; "
               "the epoch budget is scheduler.max_epochs")
    scheduler = _check_scheduler(v, sched_raw, max_epochs)
    fixed_cfg = C.with_values(fixed_cfg, {"optim.epochs": max_epochs})
    if fixed_cfg.data.val_fraction == 0 and raw.get("metric", "pa_mpjpe_mm") != "train_loss":
        v.fail("fixed.data.val_fraction", "0 leaves no validation images to score trials on; use e.g. 0.1")

    space_raw = raw.get("space") or {}
    if not isinstance(space_raw, dict):
        v.fail("space", "expected a mapping of section.key: {type: ...}")
    space: list[Param] = []
    for key, pdef in space_raw.items():
        space.append(_check_param(v, str(key), pdef, fixed_cfg, space))
    if sum(k in fixed or any(p.key == k for p in space) for k in MILESTONE_KEYS) == 1:
        v.fail("milestones", "give both milestones.first and milestones.second (in space or fixed), or neither")
    for key in fixed:
        if any(p.key == key for p in space):
            v.fail(f"fixed.{key}", "is also searched in space; keep it in one place")

    resources_raw = _section(v, raw, "resources", RESOURCE_KEYS)
    resources = {"gpu": v.number("resources.gpu", resources_raw.get("gpu", 1), minimum=0),
                 "cpu": v.number("resources.cpu", resources_raw.get("cpu", 1), minimum=0)}
    if resources["cpu"] <= 0:
        v.fail("resources.cpu", f"{resources['cpu']}: must be positive")

    concurrent = raw.get("max_concurrent_trials")
    budget_raw = _section(v, raw, "budget", ("hours",))
    budget_hours = None
    if "hours" in budget_raw:
        budget_hours = float(v.number("budget.hours", budget_raw["hours"]))
        if budget_hours <= 0:
            v.fail("budget.hours", f"{budget_raw['hours']!r}: must be positive")
    spec = Spec(
        name=name, description=description, base=base, fixed=fixed, space=tuple(space),
        metric=v.choice("metric", raw.get("metric", "pa_mpjpe_mm"), METRICS),
        mode=v.choice("mode", raw.get("mode", "min"), ("min", "max")),
        scheduler=scheduler,
        sampler=_check_sampler(v, raw.get("sampler", "random" if scheduler.type == "pbt" else "tpe"), scheduler,
                               tuple(space)),
        num_samples=v.typed("num_samples", raw.get("num_samples", 10), int, minimum=1),
        max_concurrent_trials=None if concurrent is None else v.typed("max_concurrent_trials", concurrent, int,
                                                                      minimum=1),
        resources=resources,
        seed=v.typed("seed", raw.get("seed", 0), int),
        max_failures=v.typed("max_failures", raw.get("max_failures", 1), int, minimum=-1),
        source=source,
        budget_hours=budget_hours,
    )
    if scheduler.type == "pbt" and (spec.num_samples < 2 or spec.max_concurrent_trials == 1):
        v.fail("num_samples" if spec.num_samples < 2 else "max_concurrent_trials",
               "pbt needs a population: at least 2 trials running together")
    # The default trial (every parameter at its first choice / low end) must build.
    try:
        trial_config(spec, {p.key: _first_value(p) for p in spec.space if p.active({
            q.key: _first_value(q) for q in spec.space})})
    except ConfigError as e:
        v.fail("space", f"the trial config at the low end of the space is invalid: {e}")
    return spec


def _check_scheduler(v: "_Validator", raw: dict, max_epochs: int) -> Scheduler:
    """The `scheduler` mapping of one type: only the keys that type takes, each in its range."""
    kind = v.choice("scheduler.type", raw.get("type", "asha"), SCHEDULERS)
    takes = SCHEDULER_TAKES[kind]
    # Every fifo sweep stored before the other types existed wrote these two (unused) keys.
    tolerated = ("grace_period", "reduction_factor") if kind == "fifo" else ()
    for key in raw:
        if key not in ("type", "max_epochs", *takes, *tolerated):
            v.fail(f"scheduler.{key}", f"not taken by scheduler type {kind} (it takes: "
                   f"{', '.join(('max_epochs', *takes))})")
    s = Scheduler(type=kind, max_epochs=max_epochs)
    s.grace_period = v.typed("scheduler.grace_period", raw.get("grace_period", 1), int, minimum=1)
    s.reduction_factor = v.number("scheduler.reduction_factor", raw.get("reduction_factor", 3))
    if s.reduction_factor <= 1:
        v.fail("scheduler.reduction_factor", f"{s.reduction_factor}: must be greater than 1")
    if s.grace_period > max_epochs and (kind != "fifo" or "grace_period" in raw):
        v.fail("scheduler.grace_period", f"{s.grace_period} exceeds scheduler.max_epochs={max_epochs}")
    if kind == "hyperband":
        fit = hyperband_brackets(max_epochs, s.grace_period, s.reduction_factor)
        s.brackets = v.typed("scheduler.brackets", raw.get("brackets", fit), int, minimum=1)
        if s.brackets > fit:
            v.fail("scheduler.brackets", f"{s.brackets}: only {fit} bracket(s) have a rung between grace_period="
                   f"{s.grace_period} and max_epochs={max_epochs} at reduction_factor={s.reduction_factor}")
    if kind == "pbt":
        s.perturbation_interval = v.typed("scheduler.perturbation_interval",
                                          raw.get("perturbation_interval", max(1, max_epochs // 10)), int, minimum=1)
        if s.perturbation_interval > max_epochs:
            v.fail("scheduler.perturbation_interval",
                   f"{s.perturbation_interval} exceeds scheduler.max_epochs={max_epochs}: PBT would never act")
        s.quantile = float(v.number("scheduler.quantile", raw.get("quantile", 0.25)))
        if not 0 < s.quantile <= 0.5:
            v.fail("scheduler.quantile", f"{raw['quantile']!r}: the fraction of trials exploited (and cloned), "
                   "in (0, 0.5]")
        s.resample_probability = float(v.number("scheduler.resample_probability",
                                                raw.get("resample_probability", 0.25)))
        if not 0 <= s.resample_probability <= 1:
            v.fail("scheduler.resample_probability", f"{raw['resample_probability']!r}: a probability, in [0, 1]")
    return s


# Samplers that need a package beyond Optuna: (sampler, module, what to install).
_SAMPLER_NEEDS = (("gp", "scipy", "scipy"), ("gp", "torch", "torch"), ("qmc", "scipy", "scipy"),
                  ("cmaes", "cmaes", "cmaes"))


def _check_sampler(v: "_Validator", sampler: Any, scheduler: Scheduler, space: tuple[Param, ...]) -> str:
    """A sampler that can search this space under this scheduler, with its packages installed."""
    import importlib.util

    sampler = v.choice("sampler", sampler, SAMPLERS)
    for name, module, package in _SAMPLER_NEEDS:
        if sampler == name and importlib.util.find_spec(module) is None:
            v.fail("sampler", f"{sampler} needs the {package} package, which is not installed "
                   f"(pip install {package}), or choose another sampler")
    if scheduler.type == "pbt":
        if sampler not in ("random", "qmc"):
            v.fail("sampler", f"{sampler} with scheduler pbt: PBT replaces a trial's config midway, so a "
                   "sampler that learns from results would learn from configs it never chose; use random or qmc")
        if not pbt_mutable(space):
            v.fail("scheduler.type", "pbt, but the space has nothing PBT can mutate: it mutates optim.*, "
                   "augment.* and milestones.* parameters without `when:` that no other parameter depends on")
    if sampler == "cmaes" and not any(p.type != "categorical" and not p.when for p in space):
        v.fail("sampler", "cmaes searches int, float and loguniform parameters (categorical and conditional "
               "ones are drawn at random), and this space has none; use tpe, gp or random")
    return sampler


def _resolve_base(v: "_Validator", base: Any, base_dir: Path | None) -> Config:
    if base is None:
        return Config()
    if isinstance(base, dict):
        try:
            return Config.from_dict(base, source=f"{v.source}: base")
        except ConfigError as e:
            raise ConfigError(str(e)) from None
    if not isinstance(base, str):
        v.fail("base", f"expected a preset name, a config path or a mapping, got {type(base).__name__}")
    candidate = Path(base)
    if not candidate.is_absolute() and base_dir is not None and (base_dir / candidate).is_file():
        candidate = base_dir / candidate
    try:
        return C.load_config(candidate if candidate.is_file() else base)
    except ConfigError as e:
        v.fail("base", str(e))


def _check_fixed(v: "_Validator", key: str, value: Any) -> Any:
    if key in MILESTONE_KEYS:
        return _fraction(v, f"fixed.{key}", value)
    if key == "data.dir":
        v.fail(f"fixed.{key}", "the dataset is given to the search (--data), not fixed in the spec")
    try:
        return C.coerce(key, value, source="x")
    except ConfigError as e:
        v.fail(f"fixed.{key}", str(e).removeprefix("x: "))


def _fraction(v: "_Validator", where: str, value: Any) -> float:
    x = v.number(where, value)
    if not 0 < x < 1:
        v.fail(where, f"{value!r}: a milestone is a fraction of the epoch budget, in (0, 1)")
    return float(x)


def _check_param(v: "_Validator", key: str, pdef: Any, fixed_cfg: Config, earlier: list[Param]) -> Param:
    where = f"space.{key}"
    if key in NOT_SEARCHABLE:
        v.fail(where, "cannot be searched (optim.epochs is scheduler.max_epochs; data.dir is --data)")
    if key not in MILESTONE_KEYS:
        try:
            tp = C.field_type(key)
        except ConfigError as e:
            v.fail(where, str(e))
    else:
        tp = float
    if not isinstance(pdef, dict):
        v.fail(where, "expected a mapping {type: categorical|int|float|loguniform, ...}")
    for k in pdef:
        if k not in PARAM_KEYS:
            v.fail(f"{where}.{k}", f"unknown key (known: {', '.join(PARAM_KEYS)})")
    kind = v.choice(f"{where}.type", pdef.get("type"), PARAM_TYPES)
    allowed = set(_type_args(tp))
    present = {k for k in ("values", "low", "high", "step") if k in pdef}
    needs = {"categorical": {"values"}, "int": {"low", "high"}, "float": {"low", "high"},
             "loguniform": {"low", "high"}}[kind]
    may = needs | ({"step"} if kind in ("int", "float") else set())
    for k in needs - present:
        v.fail(f"{where}.{k}", f"required for type {kind}")
    for k in present - may:
        v.fail(f"{where}.{k}", f"not allowed for type {kind}")

    def check_value(value: Any, what: str) -> Any:
        if key in MILESTONE_KEYS:
            return _fraction(v, what, value)
        try:
            value = C.coerce(key, value, source="x")
        except ConfigError as e:
            v.fail(what, str(e).removeprefix("x: "))
        try:
            C.with_values(fixed_cfg, {key: value})
        except ConfigError as e:
            v.fail(what, str(e))
        return value

    values = low = high = step = None
    as_int = False
    if kind == "categorical":
        raw_values = pdef["values"]
        if not isinstance(raw_values, list) or not raw_values:
            v.fail(f"{where}.values", "expected a non-empty list")
        values = []
        for i, x in enumerate(raw_values):
            if not (x is None or isinstance(x, (bool, int, float, str))):
                v.fail(f"{where}.values", f"{x!r}: Optuna categorical choices must be numbers, strings, "
                       "booleans or null")
            values.append(check_value(x, f"{where}.values[{i}]"))
        if len(set(map(repr, values))) != len(values):
            v.fail(f"{where}.values", f"{raw_values}: duplicate choices")
        values = tuple(values)
    else:
        if kind == "int" and int not in allowed:
            v.fail(f"{where}.type", f"int, but {key} is {C._type_name(tp)}")
        if kind in ("float", "loguniform") and float not in allowed and int not in allowed:
            v.fail(f"{where}.type", f"{kind}, but {key} is {C._type_name(tp)}")
        as_int = kind == "int" or (kind == "loguniform" and float not in allowed)
        low = v.typed(f"{where}.low", pdef["low"], int) if as_int else v.number(f"{where}.low", pdef["low"])
        high = v.typed(f"{where}.high", pdef["high"], int) if as_int else v.number(f"{where}.high", pdef["high"])
        if low > high:
            v.fail(f"{where}.low", f"low={low} > high={high}")
        if kind == "loguniform" and low <= 0:
            v.fail(f"{where}.low", f"{low}: a loguniform range needs low > 0")
        if "step" in pdef:
            step = v.typed(f"{where}.step", pdef["step"], int, minimum=1) if as_int else \
                v.number(f"{where}.step", pdef["step"])
            if step <= 0:
                v.fail(f"{where}.step", f"{step}: must be positive")
        low, high = check_value(low, f"{where}.low"), check_value(high, f"{where}.high")

    when: list[tuple[str, tuple]] = []
    cond = pdef.get("when") or {}
    if not isinstance(cond, dict):
        v.fail(f"{where}.when", "expected a mapping {earlier_key: value or [values]}")
    for ck, cv in cond.items():
        parent = next((p for p in earlier if p.key == ck), None)
        if parent is None or parent.type != "categorical":
            v.fail(f"{where}.when", f"'{ck}' must be a categorical parameter listed earlier in space")
        options = tuple(cv) if isinstance(cv, list) else (cv,)
        for o in options:
            if o not in parent.values:
                v.fail(f"{where}.when", f"{ck}={o!r} is not one of its values {list(parent.values)}")
        when.append((ck, tuple(x for x in parent.values if x in options)))
    return Param(key=key, type=kind, values=values, low=low, high=high, step=step, when=tuple(when),
                 integer=kind != "categorical" and as_int)


def _type_args(tp: Any) -> tuple:
    return typing.get_args(tp) or (tp,)


def _first_value(p: Param) -> Any:
    return p.values[0] if p.type == "categorical" else p.low


class _Validator:
    """Typed field checks that fail with `SOURCE: key: problem` on one line."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str) -> typing.NoReturn:
        where = f"{self.source}: {key}: " if key else f"{self.source}: "
        raise ConfigError(where + " ".join(problem.split()))

    def typed(self, key: str, value: Any, tp: type, minimum: int | None = None) -> Any:
        if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
            self.fail(key, f"{value!r}: expected an integer")
        if tp is str and not isinstance(value, str):
            self.fail(key, f"{value!r}: expected a string")
        if minimum is not None and value < minimum:
            self.fail(key, f"{value!r}: must be at least {minimum}")
        return value

    def number(self, key: str, value: Any, minimum: float | None = None) -> float | int:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"{value!r}: expected a number")
        if minimum is not None and value < minimum:
            self.fail(key, f"{value!r}: must be at least {minimum}")
        return value

    def choice(self, key: str, value: Any, options: tuple) -> Any:
        if value not in options:
            self.fail(key, f"{value!r}: expected one of {', '.join(options)}")
        return value


# -- overrides -----------------------------------------------------------------------------
def with_overrides(spec: Spec, overrides: list[str] | None = None, samples: int | None = None) -> Spec:
    """A validated copy with `--set key=value` pinned in `fixed` and `--samples` applied.

    Pinning a searched key removes it from the space; parameters conditional on it keep their
    condition's verdict for the pinned value (dropped when it fails, unconditional when it holds).
    """
    raw = spec.to_dict()
    for text in overrides or []:
        key, sep, value_text = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {text!r}: expected section.key=value")
        if key in MILESTONE_KEYS:
            value: Any = yaml.safe_load(value_text)
        else:
            key, value = C.parse_override(text)
        if key == "optim.epochs":
            raw["scheduler"]["max_epochs"] = value
            raw["fixed"].pop(key, None)
            continue
        raw["fixed"][key] = value
        if key in raw["space"]:
            del raw["space"][key]
            for other in list(raw["space"]):
                when = raw["space"][other].get("when") or {}
                if key in when:
                    ok = value in (when[key] if isinstance(when[key], list) else [when[key]])
                    if not ok:
                        del raw["space"][other]
                    else:
                        del when[key]
    if samples is not None:
        raw["num_samples"] = samples
    out = parse_spec(raw, source=f"{spec.source} (with --set/--samples)", default_name=spec.name)
    out.source = spec.source
    return out

