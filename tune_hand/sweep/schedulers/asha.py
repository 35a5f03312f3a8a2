"""ASHA and asynchronous Hyperband: Ray's ASHAScheduler, whose rungs and bracket draws survive a resume.

    ResumableASHA(max_t=4, grace_period=1, reduction_factor=2)               # `asha`
    ResumableASHA(max_t=27, grace_period=1, reduction_factor=3, brackets=4)  # `hyperband`

`hyperband` is Ray's asynchronous Hyperband (Li et al. 2020: ASHA with several brackets; bracket
s never stops a trial before grace * reduction^s epochs), not the synchronous
`HyperBandScheduler` nor `HyperBandForBOHB`: those pause and restart trials to fill brackets
in lockstep (a process start and a checkpoint reload per pause) and keep their bracket state in
structures Ray never saves, and HyperBandForBOHB only works with Ray's TuneBOHB searcher (the
ConfigSpace/hpbandster stack), not with Optuna. Asynchronous Hyperband with Optuna's TPE
choosing the configurations is the BOHB recipe (TPE-like density models over Hyperband
brackets) on the machinery `asha` already resumes: the same rung records, one list per bracket.

Ray draws each new trial's bracket from NumPy's global generator (weighted by the bracket's
rung count), and draws again when a resumed sweep re-adds its trials, so a trial could change
bracket across a resume. Here the draw comes from the scheduler's own seeded generator, and
both the assignment and the generator's state are saved with the rungs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler

from ._base import SnapshotOnProgress


class ResumableASHA(SnapshotOnProgress, ASHAScheduler):
    """Ray's ASHAScheduler (one bracket: ASHA; several: asynchronous Hyperband) whose rung records
    and bracket assignments can be read out and put back (`save_state`/`load_state`)."""

    _assigned: dict[str, int] | None = None  # trial id -> bracket index; absent in older pickles
    _rng: np.random.Generator | None = None

    def __init__(self, *args, min_snapshot_s: float = 1.0, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_snapshot_s = min_snapshot_s
        self._last_forced = 0.0
        self._assigned = {}
        self._rng = np.random.default_rng(seed)

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if len(self._brackets) > 1:
            index = self._assigned.get(trial.trial_id)
            if index is None:
                sizes = np.array([len(b._rungs) for b in self._brackets], dtype=float)
                index = int(self._rng.choice(len(self._brackets), p=sizes / sizes.sum()))  # Ray's weights
                self._assigned[trial.trial_id] = index
            self._trial_info[trial.trial_id] = self._brackets[index]

    # -- state ---------------------------------------------------------------------------
    def rungs(self) -> list[list[tuple[float, dict[str, float]]]]:
        """Per bracket: [(milestone, {trial_id: reward recorded at that milestone}), ...]."""
        return [[(milestone, dict(recorded)) for milestone, recorded in b._rungs] for b in self._brackets]

    def load_rungs(self, saved: list[list[tuple[float, dict[str, float]]]], num_stopped: int = 0) -> None:
        """Put saved records back, in place: restored trials already point at these brackets."""
        if len(saved) != len(self._brackets) or any(
                [m for m, _ in b._rungs] != [m for m, _ in s] for b, s in zip(self._brackets, saved)):
            raise ValueError("saved ASHA rungs do not match this scheduler's milestones "
                             f"({[[m for m, _ in s] for s in saved]} vs {[[m for m, _ in b._rungs] for b in self._brackets]})")
        for bracket, rungs in zip(self._brackets, saved):
            for (_, recorded), (_, values) in zip(bracket._rungs, rungs):
                recorded.clear()
                recorded.update(values)
        self._num_stopped = num_stopped

    @property
    def num_stopped(self) -> int:
        return self._num_stopped

    def save_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"asha_rungs": self.rungs(), "num_stopped": self.num_stopped}
        if len(self._brackets) > 1:
            state["brackets"] = dict(self._assigned)
            state["bracket_rng"] = self._rng.bit_generator.state
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        if "asha_rungs" in state:
            self.load_rungs(state["asha_rungs"], state.get("num_stopped", 0))
        if "brackets" in state:
            self._assigned = dict(state["brackets"])
            self._rng.bit_generator.state = state["bracket_rng"]
            for trial_id, index in self._assigned.items():  # trials added before the state came back
                if trial_id in self._trial_info:
                    self._trial_info[trial_id] = self._brackets[index]

