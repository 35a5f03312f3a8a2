"""Old home of the sweep spec, kept so that sweeps written before `tune_hand.sweep` resume.

Ray pickles the define-by-run function, and the Spec inside it, by reference: sweeps started
by tune-hand before the `tune_hand.sweep` package name `tune_hand.spec.define_by_run`,
`tune_hand.spec.Spec`, `Param` and `Scheduler`. New code imports from `tune_hand.sweep`.
"""

from .sweep.parse import load_spec, parse_spec, spec_names, spec_path, with_overrides
from .sweep.space import define_by_run, milestone_epochs, search_space, trial_config
from .sweep.spec import (METRICS, MILESTONE_KEYS, SAMPLERS, SCHEDULERS, Param, Scheduler, Spec, spec_diff,
                         spec_hash)

__all__ = ["METRICS", "MILESTONE_KEYS", "SAMPLERS", "SCHEDULERS", "Param", "Scheduler", "Spec", "define_by_run",
           "load_spec", "milestone_epochs", "parse_spec", "search_space", "spec_diff", "spec_hash", "spec_names",
           "spec_path", "trial_config", "with_overrides"]
