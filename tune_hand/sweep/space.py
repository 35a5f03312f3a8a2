"""The spec's space for Optuna (a define-by-run function), and a sampled trial's config.

    space = search_space(spec)                      # OptunaSearch(space=space, ...)
    cfg = trial_config(spec, {"optim.lr": 1e-3, "model.channels": 16, ...})

`define_by_run` must stay importable by this name: Ray pickles it by reference with the
searcher (sweeps written before this package name it `tune_hand.spec.define_by_run`, which
re-exports it).
"""

from __future__ import annotations

import functools
from typing import Any

from .. import config as C
from ..config import Config
from ..errors import ConfigError, TuneHandError
from .spec import MILESTONE_KEYS, Spec


def define_by_run(trial, spec: Spec) -> dict[str, Any]:
    """Sample one trial's parameters with Optuna's `trial.suggest_*`; return the fixed values.

    Use through `functools.partial(define_by_run, spec=spec)` (Ray pickles it by reference).
    Conditional parameters are suggested only when their condition holds, so Optuna never sees
    a value that the trial would ignore.
    """
    sampled: dict[str, Any] = {}
    for p in spec.space:
        if not p.active(sampled):
            continue
        if p.type == "categorical":
            sampled[p.key] = trial.suggest_categorical(p.key, list(p.values))
        elif p.integer:
            sampled[p.key] = trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.type == "loguniform")
        else:
            sampled[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step,
                                                 log=p.type == "loguniform")
    return dict(spec.fixed)


def search_space(spec: Spec):
    """The define-by-run callable for `OptunaSearch(space=...)`: picklable by reference."""
    return functools.partial(define_by_run, spec=spec)


def milestone_epochs(first: float, second: float, epochs: int) -> list[int]:
    """Two fractions of the budget -> strictly increasing epochs (see module docstring)."""
    a, b = sorted(min(max(1, round(f * epochs)), epochs) for f in (first, second))
    return [a, b if b > a else a + 1]


def trial_config(spec: Spec, params: dict[str, Any]) -> Config:
    """The validated Config of one trial: base, then fixed, then the sampled `params`."""
    values = {**spec.fixed, **params}
    unknown = [k for k in params if k not in MILESTONE_KEYS and spec.param(k) is None and k not in spec.fixed]
    if unknown:
        raise ConfigError(f"{spec.source}: trial parameters {unknown} are not in the spec's space")
    plain = {k: x for k, x in values.items() if k not in MILESTONE_KEYS}
    plain["optim.epochs"] = spec.max_epochs
    if all(k in values for k in MILESTONE_KEYS):
        plain["optim.milestones"] = milestone_epochs(values["milestones.first"], values["milestones.second"],
                                                     spec.max_epochs)
    try:
        return C.with_values(spec.base, plain, source=f"{spec.source} (trial)")
    except TuneHandError as e:
        raise ConfigError(f"{spec.source}: trial config: {e}") from None


def distributions(spec: Spec, params: dict[str, Any]) -> dict[str, Any] | None:
    """Optuna's distribution of each parameter `define_by_run` would suggest for `params` (the
    active ones), or None when a value lies outside the space: what `fork` tells a new study."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    sampled: dict[str, Any] = {}
    for p in spec.space:
        if not p.active(sampled):
            if p.key in params and params[p.key] is not None:
                return None  # a value the new space would never suggest
            continue
        if p.key not in params:
            return None
        value = params[p.key]
        if p.type == "categorical":
            if value not in p.values:
                return None
            out[p.key] = CategoricalDistribution(list(p.values))
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not p.low <= value <= p.high:
                return None
            if p.step and abs(round((value - p.low) / p.step) * p.step + p.low - value) > 1e-9 * max(1, abs(value)):
                return None
            out[p.key] = (IntDistribution(p.low, p.high, step=p.step or 1, log=p.type == "loguniform") if p.integer
                          else FloatDistribution(float(p.low), float(p.high), step=p.step, log=p.type == "loguniform"))
        sampled[p.key] = value
    return out
