"""Population Based Training (Jaderberg et al. 2017): Ray's PopulationBasedTraining over the spec's
space, resumable.

    mutable = pbt_mutable(spec.space)                       # tune_hand.sweep.spec
    ResumablePBT(time_attr="training_iteration", perturbation_interval=2,
                 hyperparam_mutations=hyperparam_mutations(mutable), custom_explore_fn=ClipToSpace(mutable))

Every `perturbation_interval` epochs a trial in the bottom `quantile` of the running trials
copies the checkpoint and config of one in the top `quantile` (exploit) and mutates the copied
config (explore): each mutated parameter is, with `resample_probability`, drawn afresh from the
space, else moved (categorical: to a neighbouring value of its list; numeric: x1.2 or x0.8,
Ray's factors). Trials are never stopped early: each runs `max_epochs`. A trial's last epoch is
no perturbation: a trial exploiting then, or cloning a checkpoint at `max_epochs`, would have
nothing left to train and end as a copy of another trial (Ray perturbs there too).

What is mutated (`spec.pbt_mutable`): the `optim.*`, `augment.*` and `milestones.*` parameters
that are not conditional (`when:`) and that no other parameter is conditional on. Everything else
is inherited from the donor on exploit, with its weights (Ray copies the donor's whole config):
the architecture (`model.*`, `data.image_size`) must match the checkpoint that is loaded, the
rest of `data.*` defines the validation split that ranks trials, and a conditional parameter and
its condition stay one valid sample of the space only if they travel together. A space with
nothing mutable is refused when the spec is read.

A trial trains at its current config's learning rate and milestones whatever checkpoint it
resumes from: `Trainer.restore` takes lr, weight decay, milestones and gamma from the config
and replays MultiStepLR up to the checkpoint's epoch, so after an exploit the reported `lr` is
the mutated lr x gamma^(milestones passed) (tests/test_search_methods.py checks every epoch).

Written by hand because Ray lacks it:
- No perturbation at the last epoch (above).
- Numeric mutations are our `Resample` draws and `ClipToSpace` puts perturbed values back into
  [low, high] on the parameter's step grid: Ray's x1.2 / x0.8 leave the range and ignore steps.
- Ray refuses a searcher with PBT (`on_trial_add` raises): a model-based sampler would learn
  from trials whose config PBT replaced midway. The spec allows PBT only with samplers that
  learn nothing (random, qmc), which draw the initial population from the define-by-run
  space (conditions included); `_PBTWithSearcher` hides the searcher from that one check.
- Ray's `_exploit` points the trial at the donor's checkpoint without invalidating the trial's
  cached run metadata, so a snapshot taken before the trial restarts could pair its new config
  with its own old checkpoint; a resumed sweep would then train the wrong weights. We
  invalidate the cache at the exploit.
- Resume: Ray never saves a scheduler and keys PBT's per-trial state by Trial objects. The state
  (score, last perturbation and train epochs, result, and which checkpoint the trial offers to
  be cloned from, by trial directory and checkpoint name) is saved by trial id and re-attached
  as Ray re-adds the restored trials; the checkpoint is looked up among the restored trial's
  own (so paths follow a moved experiment; one deleted since leaves the trial unclonable until
  its next perturbation).

PBT's random choices (donor, factor, resampling) use Python's global `random`, as Ray's code
does: they are not seeded, so a PBT sweep is not reproducible run to run.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from ..spec import Param
from ._base import SnapshotOnProgress


def hyperparam_mutations(mutable: list[Param]) -> dict[str, Any]:
    """Ray's `hyperparam_mutations`: a categorical's values, or a `Resample` draw for a numeric one."""
    return {p.key: list(p.values) if p.type == "categorical" else Resample(p) for p in mutable}


def snap(p: Param, x: float) -> float | int:
    """`x` clipped to [low, high] and put on the parameter's step grid (an int for int fields)."""
    x = min(max(float(x), p.low), p.high)
    if p.step:
        k = min(round((x - p.low) / p.step), math.floor((p.high - p.low) / p.step + 1e-9))
        x = p.low + k * p.step
    return round(x) if p.integer else x


class Resample:
    """A fresh draw of one numeric parameter from its range (log-uniform for `loguniform`)."""

    def __init__(self, param: Param):
        self.param = param

    def __call__(self) -> float | int:
        p = self.param
        if p.type == "loguniform":
            return snap(p, math.exp(random.uniform(math.log(p.low), math.log(p.high))))
        return snap(p, random.uniform(p.low, p.high))


class ClipToSpace:
    """Ray's `custom_explore_fn`: every mutated numeric value back inside the space."""

    def __init__(self, mutable: list[Param]):
        self.params = [p for p in mutable if p.type != "categorical"]

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for p in self.params:
            if config.get(p.key) is not None:
                config[p.key] = snap(p, config[p.key])
        return config


class _WithoutSearcher:
    """The controller as PBT's `on_trial_add` sees it: without a searcher (see the module docstring)."""

    search_alg = None

    def __init__(self, controller):
        self._controller = controller

    def __getattr__(self, name: str):
        return getattr(self._controller, name)


class _PBTWithSearcher(PopulationBasedTraining):
    max_epochs: int | None = None

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(_WithoutSearcher(tune_controller), trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.max_epochs is not None and result.get(self._time_attr, 0) >= self.max_epochs:
            return TrialScheduler.CONTINUE  # the last epoch is no perturbation (module docstring)
        return super().on_trial_result(tune_controller, trial, result)


class ResumablePBT(SnapshotOnProgress, _PBTWithSearcher):
    """Ray's PopulationBasedTraining whose per-trial state survives a resume (`save_state`/`load_state`)."""

    def __init__(self, *args, max_epochs: int | None = None, min_snapshot_s: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs
        self.min_snapshot_s = min_snapshot_s
        self._restored: dict[str, dict[str, Any]] = {}  # trial id -> saved state, until it is re-added

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        saved = self._restored.pop(trial.trial_id, None)
        if saved is not None:
            self._put_back(trial, saved)

    def _exploit(self, tune_controller, trial, trial_to_clone) -> None:
        super()._exploit(tune_controller, trial, trial_to_clone)
        trial.run_metadata.invalidate_cache()  # the next snapshot must name the donor's checkpoint

    # -- state ---------------------------------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        trials = {trial.trial_id: self._saved(state) for trial, state in self._trial_state.items()}
        for trial_id, saved in self._restored.items():  # restored, not re-added yet
            trials.setdefault(trial_id, saved)
        return {"pbt": trials, "pbt_counts": [self._num_checkpoints, self._num_perturbations]}

    def load_state(self, state: dict[str, Any]) -> None:
        saved = dict(state.get("pbt", {}))
        for trial in list(self._trial_state):  # trials added before the state came back
            if trial.trial_id in saved:
                self._put_back(trial, saved.pop(trial.trial_id))
        self._restored = saved
        self._num_checkpoints, self._num_perturbations = state.get("pbt_counts", [0, 0])

    def _saved(self, state) -> dict[str, Any]:
        checkpoint, result, pending = state.last_checkpoint, state.last_result, False
        if checkpoint is not None and hasattr(checkpoint, "resolve"):  # a save Ray has not delivered yet
            resolved = checkpoint.resolve(block=False)
            checkpoint, pending = (None, True) if resolved is None else (resolved.checkpoint, False)
            result = result if resolved is None else resolved.metrics
        return {"orig_tag": state.orig_tag, "last_score": state.last_score,
                "last_perturbation_time": state.last_perturbation_time, "last_train_time": state.last_train_time,
                "last_result": result, "checkpoint": _name(checkpoint) if checkpoint is not None else None,
                "pending": pending}

    def _put_back(self, trial, saved: dict[str, Any]) -> None:
        state = self._trial_state[trial]
        for key in ("orig_tag", "last_score", "last_perturbation_time", "last_train_time", "last_result"):
            setattr(state, key, saved[key])
        state.last_checkpoint = None
        manager = trial.run_metadata.checkpoint_manager
        if manager is None or not (saved["checkpoint"] or saved["pending"]):
            return
        for found in [manager.latest_checkpoint_result, *manager.best_checkpoint_results]:
            if found is None or found.checkpoint is None:
                continue
            if _name(found.checkpoint) == saved["checkpoint"] or (
                    saved["pending"] and found.metrics.get(self._time_attr) == saved["last_train_time"]):
                state.last_checkpoint, state.last_result = found.checkpoint, found.metrics
                return


def _name(checkpoint) -> str:
    """A checkpoint's place within the experiment: `TRIAL_DIR/checkpoint_NNNNNN`."""
    path = Path(checkpoint.path)
    return f"{path.parent.name}/{path.name}"
