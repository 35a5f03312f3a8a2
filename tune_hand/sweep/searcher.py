"""An Optuna searcher that tells Optuna what really happened to each trial.

    searcher = build_searcher(spec, max_concurrent=4)   # the spec's Optuna sampler, under a ConcurrencyLimiter
    sampler = build_sampler(spec)                         # the Optuna sampler alone

The samplers (`sampler:` in the spec), all seeded with the spec's seed:
    tpe     TPESampler(multivariate=True, constant_liar=True): Optuna 5's defaults for one
            objective, spelled out so that Optuna 4 (whose defaults were False) samples alike;
            the constant liar keeps concurrent trials apart. Sweeps written before keep their
            own pickled sampler when they resume.
    random  RandomSampler, the baseline (and PBT's default initial population).
    gp      GPSampler (a Gaussian process over all parameter types; needs torch and scipy).
    cmaes   CmaEsSampler(consider_pruned_trials=True): CMA-ES moves int/float/loguniform
            parameters only; categorical and conditional ones are drawn by its random fallback
            (the spec must have one numeric parameter). It counts pruned (ASHA/median-stopped)
            trials at their last value: else under early stopping it would see only the few
            trials that finish and hardly form a generation.
    qmc     QMCSampler(scramble=True): a scrambled Sobol sequence, space-filling, learning nothing.
gp, cmaes and qmc draw what they cannot model (conditional parameters, and categorical ones for
cmaes) with a random sampler; their per-trial "sampled independently" warnings are off.
A resumed sweep continues each sampler where it was: Ray pickles the whole searcher (the study
with every trial, the sampler and its generator state, CMA-ES's optimiser in the trials' system
attributes, the QMC sequence position in the study's).

Ray's OptunaSearch tells Optuna COMPLETE with the last value for every trial that ended,
including those ASHA stopped and those that diverged. `TrialStateOptunaSearch` tells:
    finished the budget  -> COMPLETE with the trial's best value (the one `best` exports)
    stopped by ASHA      -> PRUNED (its per-epoch values are already reported)
    diverged             -> PRUNED (the sentinel value marks its region as bad for TPE)
    error                -> FAIL
`benchmarks/bench_tpe_tell.py` measured these choices against Ray's default on a simulated
ASHA sweep; see its results in the README. The class is pickled by reference with Ray's
searcher state: sweeps written before this package name it `tune_hand.search_alg.*`.
"""

from __future__ import annotations


from ray.tune.search.optuna import OptunaSearch

from ..objective import Objective, finite
from .space import search_space
from .spec import Spec

# What to tell Optuna about a trial ASHA stopped and about a diverged one; see the module doc.
STOPPED_AS = "pruned"
DIVERGED_AS = "pruned"


class TrialStateOptunaSearch(OptunaSearch):
    """OptunaSearch that tells finished, ASHA-stopped, diverged and errored trials apart."""

    def __init__(self, *args, max_epochs: int, time_attr: str = "training_iteration", **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._time_attr = time_attr
        self._best_values: dict[str, float] = {}
        self._steps: dict[str, set[int]] = {}  # epochs reported to Optuna, per trial

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        step = result.get(self._time_attr)
        if step not in self._steps.get(trial_id, ()):  # a resumed trial may report an epoch again
            super().on_trial_result(trial_id, result)
            self._steps.setdefault(trial_id, set()).add(step)
        objective = Objective.single(self.metric, self.mode)  # Ray's Searcher holds metric and mode
        if objective.scored(result) and objective.better(result[self.metric], self._best_values.get(trial_id)):
            self._best_values[trial_id] = float(result[self.metric])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        # The result that made ASHA stop a trial (and a trial's final one) reaches the searcher only
        # here, not through on_trial_result: record it as the epoch's value first.
        step = result.get(self._time_attr)
        if step is not None and step not in self._steps.get(trial_id, ()) and finite(result.get(self.metric)):
            self.on_trial_result(trial_id, result)
        outcome = trial_outcome(result, error, self._max_epochs, self._time_attr)
        best = self._best_values.get(trial_id)
        ot_trial.set_user_attr("tune_hand_state", outcome)
        state, value = TrialState.FAIL, None
        if outcome == "finished" and best is not None:
            state, value = TrialState.COMPLETE, best
        elif outcome == "stopped early":
            state, value = ((TrialState.COMPLETE, best) if STOPPED_AS == "complete" and best is not None
                            else (TrialState.PRUNED, None))
        elif outcome == "diverged" and DIVERGED_AS == "pruned":
            state = TrialState.PRUNED
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)
        self._best_values.pop(trial_id, None)
        self._steps.pop(trial_id, None)


def trial_outcome(result: dict, error: bool, max_epochs: int, time_attr: str = "training_iteration") -> str:
    """finished | stopped early | diverged | error, from a trial's last result."""
    if error:
        return "error"
    if result.get("diverged"):
        return "diverged"
    if int(result.get(time_attr, 0) or 0) >= max_epochs:
        return "finished"
    return "stopped early" if result else "error"



def build_sampler(spec: Spec):
    """The spec's Optuna sampler, seeded (see the module docstring for each)."""
    import warnings

    from optuna import samplers
    from optuna.exceptions import ExperimentalWarning

    seed = spec.seed
    if spec.sampler == "tpe":
        return samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if spec.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    if spec.sampler == "gp":
        return samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if spec.sampler == "cmaes":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # consider_pruned_trials: chosen, see above
            return samplers.CmaEsSampler(seed=seed, consider_pruned_trials=True, warn_independent_sampling=False)
    if spec.sampler == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # QMCSampler is "experimental" since Optuna 3
            return samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {spec.sampler!r}")  # parse.py admits none other


def build_searcher(spec: Spec, max_concurrent: int):
    """The spec's sampler (`build_sampler`) in our searcher, limited to `max_concurrent`.

    Always limited: without max_concurrent Ray lets a custom searcher keep only one trial
    pending, so a cluster fills one trial per scheduling round (benchmarks/bench_driver.py).
    """
    from ray.tune.search import ConcurrencyLimiter

    searcher = TrialStateOptunaSearch(space=search_space(spec), metric=spec.metric, mode=spec.mode,
                                      sampler=build_sampler(spec), max_epochs=spec.max_epochs)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
