"""The sweep: a spec searched on Ray Tune with Optuna and ASHA, and what it leaves on disk.

    from tune_hand.sweep import load_spec, run_search, resume_search, load_status, export_best

    spec = load_spec("quick")                              # parse.py: YAML -> a validated Spec
    info = run_search(spec, data_dir="data/", storage="sweeps", name="q1")   # driver.py (Ray)
    info = resume_search("sweeps/q1")
    status = load_status("sweeps/q1")                      # results.py: no Ray needed
    export_best("sweeps/q1", "best/")

The rooms, and which way imports flow (a module imports only those below it):

    fork.py           a new experiment from an old one's results: warm start, carry, continue
    driver.py         the Ray Tune driver: builds the Tuner, runs or restores it   (Ray)
    live_table.py     progress on stderr while trials run                          (Ray)
    schedulers/       asha, hyperband, median, pbt, fifo: each survives a resume   (Ray)
    searcher.py       Optuna (tpe, random, gp, cmaes, qmc) told the truth about each trial (Ray)
    snapshots.py      every experiment snapshot signed as Ray writes it            (Ray)
    loopback.py       the local Ray's sockets on 127.0.0.1                         (Ray)
    results.py        the Ray-free readers: status, best, trial rows, cost, the table
    signing.py        HMAC signatures of every file Ray would unpickle on resume; `trust`
    reaper.py         a watchdog: nothing of a local Ray outlives a SIGKILLed driver
    budget.py         resource-hours spent, and the budget the schedulers obey
    experiment.py     the experiment directory and tune-hand's files in it; names; damaged state
    lock.py           one driver per experiment (a lock file or a bucket lease)
    storage.py        local directories and bucket URIs behind one interface
    parse.py          YAML -> Spec, validation, --set overrides
    space.py          the space -> Optuna's define-by-run; a sampled trial's config
    spec.py           the typed Spec, its hash and diff
    (tune_hand.objective: metrics, modes, better/worst, the divergence sentinel)

Names are resolved lazily, so `from tune_hand.sweep import load_status` never imports the
driver (or Ray). Sweeps written before this package pickled `tune_hand.sweep.trial_dirname`
by reference; it resolves here too.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "driver": ("run_search", "resume_search", "trial_dirname", "trial_resources", "ExperimentInfo",
               "CHECKPOINTS_TO_KEEP"),
    "results": ("load_status", "export_best", "best_checkpoint", "trial_results", "format_status", "live_state",
                "trial_dirs", "trial_rows", "ray_trial_states", "state_counts", "STATES"),
    "experiment": ("open_experiment", "read_experiment", "check_unchanged", "SPEC_FILE", "SWEEP_FILE",
                   "DEFAULT_STORAGE", "Experiment"),
    "parse": ("load_spec", "parse_spec", "with_overrides", "spec_names", "spec_path"),
    "space": ("define_by_run", "search_space", "trial_config", "milestone_epochs"),
    "spec": ("Spec", "Param", "Scheduler", "spec_hash", "spec_diff"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE) + ["Objective"]


def __getattr__(name: str) -> Any:
    if name == "Objective":
        from ..objective import Objective

        return Objective
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
