"""Old home of the sweep's Ray Tune pieces, kept so that sweeps written before
`tune_hand.sweep` resume: Ray's tuner.pkl and callback state name these classes by reference.
New code imports from `tune_hand.sweep.schedulers`, `.searcher` and `.live_table`.
"""

from .sweep.live_table import LiveTable
from .sweep.schedulers import AshaStateCallback, ResumableASHA
from .sweep.searcher import DIVERGED_AS, STOPPED_AS, TrialStateOptunaSearch, trial_outcome

__all__ = ["DIVERGED_AS", "STOPPED_AS", "AshaStateCallback", "LiveTable", "ResumableASHA",
           "TrialStateOptunaSearch", "trial_outcome"]
