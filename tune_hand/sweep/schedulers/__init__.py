"""The sweep's trial schedulers: Ray's own, each made to survive a resume; one file per scheduler.

    scheduler, callbacks = build_scheduler(spec)    # by spec.scheduler.type
    RunConfig(callbacks=[*callbacks, ...])

    asha       asha.py     ResumableASHA            Ray's ASHAScheduler (one bracket)
    hyperband  asha.py     ResumableASHA            Ray's ASHAScheduler with brackets > 1 (async Hyperband)
    median     median.py   ResumableMedianStopping  Ray's MedianStoppingRule
    pbt        pbt.py      ResumablePBT             Ray's PopulationBasedTraining
    fifo       fifo.py     ResumableFIFO            Ray's FIFOScheduler
    _base.py   SnapshotOnProgress: the mixin first in every scheduler's bases (snapshots, budget)
    state.py   AshaStateCallback: carries each scheduler's state through Ray's snapshots

Ray never saves a scheduler (ray#30838), so each class here has `save_state`/`load_state`, and
`AshaStateCallback` stores that state with every experiment snapshot and restores it. These
classes are pickled by reference in Ray's `tuner.pkl`: sweeps written before this package name
`tune_hand.sweep.schedulers.ResumableASHA` / `.AshaStateCallback` (or `tune_hand.search_alg.*`),
which resolve through the imports below; newer ones name the files. Keep both.
"""

from __future__ import annotations

import time  # noqa: F401  (tests patch `schedulers.time.monotonic`, the clock SnapshotOnProgress reads)
from typing import Any

from ..spec import Spec, pbt_mutable
from ._base import SnapshotOnProgress
from .asha import ResumableASHA
from .fifo import ResumableFIFO
from .median import ResumableMedianStopping
from .pbt import ClipToSpace, ResumablePBT, hyperparam_mutations
from .state import AshaStateCallback

__all__ = ["AshaStateCallback", "ResumableASHA", "ResumableFIFO", "ResumableMedianStopping", "ResumablePBT",
           "SnapshotOnProgress", "build_scheduler"]


def build_scheduler(spec: Spec) -> tuple[Any, list[Any]]:
    """(the spec's trial scheduler, the callbacks it needs). Metric and mode come from Ray's
    TuneConfig; every decision is in epochs (`training_iteration`)."""
    s = spec.scheduler
    epochs = "training_iteration"
    if s.type == "fifo":
        scheduler: Any = ResumableFIFO()
    elif s.type in ("asha", "hyperband"):
        scheduler = ResumableASHA(time_attr=epochs, max_t=spec.max_epochs, grace_period=s.grace_period,
                                  reduction_factor=s.reduction_factor,
                                  brackets=s.brackets if s.type == "hyperband" else 1, seed=spec.seed)
    elif s.type == "median":
        scheduler = ResumableMedianStopping(time_attr=epochs, grace_period=s.grace_period)
    elif s.type == "pbt":
        mutable = pbt_mutable(spec.space)
        scheduler = ResumablePBT(time_attr=epochs, perturbation_interval=s.perturbation_interval,
                                 hyperparam_mutations=hyperparam_mutations(mutable),
                                 custom_explore_fn=ClipToSpace(mutable), quantile_fraction=s.quantile,
                                 resample_probability=s.resample_probability, max_epochs=spec.max_epochs)
    else:
        raise ValueError(f"unknown scheduler type {s.type!r}")  # parse.py admits none other
    # Pickled together with the scheduler in Ray's tuner.pkl, so a restored sweep's callback
    # puts the saved state back into the restored scheduler.
    return scheduler, [AshaStateCallback(scheduler)]
