"""Search methods from the spec: each scheduler type and sampler, and that each resumes.

Without Ray running: the spec builds the right Ray scheduler (tune-hand's mixin first), hashes
of the old forms stay, PBT mutates only what a checkpoint can continue under and stays in the
space, every scheduler's decisions after a save/restore equal the uninterrupted ones, every
sampler suggests the same trials after its searcher is saved and restored.
With Ray (slow): a sweep of each stateful scheduler SIGKILLed mid-way and resumed, and under PBT
every epoch's learning rate is its own config's lr x gamma^(milestones passed).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY, kill_driver_session
from test_sweep_resume import _raw_epochs, _snapshot_states

from tune_hand.sweep import load_spec, parse_spec, spec_hash
from tune_hand.sweep.spec import pbt_mutable

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "model.channels": {"type": "categorical", "values": [8, 16]},
    "optim.batch_size": {"type": "int", "low": 4, "high": 16, "step": 4},
    "augment.rotation_prob": {"type": "categorical", "values": [0.0, 1.0]},
    "augment.rotation_deg": {"type": "float", "low": 30, "high": 180, "step": 30,
                             "when": {"augment.rotation_prob": 1.0}},
    "optim.pa_loss_weight": {"type": "categorical", "values": [0.0, 0.5, 1.0]},
}


def spec_of(scheduler: dict, sampler: str | None = None, space: dict | None = None, **extra):
    raw = {"name": "t", "base": "small", "fixed": {"data.num_workers": 0}, "space": space or SPACE,
           "scheduler": {"max_epochs": 8, **scheduler}, "num_samples": 6, "max_concurrent_trials": 3,
           "resources": {"gpu": 0, "cpu": 1}, **extra}
    if sampler:
        raw["sampler"] = sampler
    return parse_spec(raw, source="t.yaml")


# -- the spec -> Ray's classes --------------------------------------------------------------
@pytest.mark.parametrize("kind, ray_class", [("asha", "AsyncHyperBandScheduler"), ("hyperband", "AsyncHyperBandScheduler"),
                                             ("median", "MedianStoppingRule"), ("pbt", "PopulationBasedTraining"),
                                             ("fifo", "FIFOScheduler")])
def test_each_type_is_rays_scheduler_behind_the_snapshot_mixin(kind, ray_class):
    from ray.tune import schedulers as ray_schedulers

    from tune_hand.sweep.schedulers import (
        AshaStateCallback,
        SnapshotOnProgress,
        build_scheduler,
    )

    scheduler, callbacks = build_scheduler(spec_of({"type": kind}))
    assert isinstance(scheduler, getattr(ray_schedulers, ray_class))
    assert type(scheduler).__mro__[1] is SnapshotOnProgress  # its budget/snapshot hooks wrap Ray's
    assert [type(c) for c in callbacks] == [AshaStateCallback]
    assert pickle.loads(pickle.dumps((scheduler, callbacks)))  # as Ray stores both in tuner.pkl


def test_defaults_and_the_stored_form_of_each_type():
    hb = spec_of({"type": "hyperband", "grace_period": 1, "reduction_factor": 2})
    assert hb.scheduler.brackets == 4  # rungs 1, 2, 4, 8: brackets starting at each
    assert spec_of({"type": "hyperband", "reduction_factor": 3}).scheduler.brackets == 2
    pbt = spec_of({"type": "pbt"})
    assert (pbt.sampler, pbt.scheduler.perturbation_interval, pbt.scheduler.quantile) == ("random", 1, 0.25)
    assert spec_of({"type": "pbt", "max_epochs": 145}).scheduler.perturbation_interval == 14
    for kind in ("asha", "hyperband", "median", "pbt", "fifo"):
        spec = spec_of({"type": kind})
        again = parse_spec(spec.to_dict(), source="stored")
        assert again.to_dict() == spec.to_dict() and spec_hash(again) == spec_hash(spec)
    # asha and fifo store the four keys every earlier version wrote, so old sweeps keep their hash.
    assert list(spec_of({"type": "fifo"}).to_dict()["scheduler"]) == ["type", "grace_period", "reduction_factor",
                                                                      "max_epochs"]
    assert "sampler" not in spec_of({"type": "asha"}).to_dict()
    assert list(pbt.to_dict()["scheduler"]) == ["type", "perturbation_interval", "quantile",
                                                "resample_probability", "max_epochs"]


def test_sampler_errors_are_one_line_before_ray_starts():
    from tune_hand.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^t\.yaml: sampler: tpe with scheduler pbt: [^\n]*random or qmc$"):
        spec_of({"type": "pbt"}, sampler="tpe")
    with pytest.raises(ConfigError, match=r"^t\.yaml: scheduler\.reduction_factor: not taken by scheduler type "
                                          r"median \(it takes: max_epochs, grace_period\)$"):
        spec_of({"type": "median", "reduction_factor": 2})


# -- PBT's mutations --------------------------------------------------------------------------
def test_pbt_mutates_training_hyperparameters_only_and_stays_in_the_space():
    import random

    from tune_hand.sweep.schedulers.pbt import (
        ClipToSpace,
        Resample,
        hyperparam_mutations,
    )

    spec = spec_of({"type": "pbt"})
    mutable = pbt_mutable(spec.space)
    # model.channels: architecture; augment.rotation_prob/_deg: a condition and its dependant.
    assert [p.key for p in mutable] == ["optim.lr", "optim.batch_size", "optim.pa_loss_weight"]
    mutations = hyperparam_mutations(mutable)
    assert mutations["optim.pa_loss_weight"] == [0.0, 0.5, 1.0]
    random.seed(0)
    lr, batch = spec.param("optim.lr"), spec.param("optim.batch_size")
    draws = [Resample(lr)() for _ in range(200)]
    assert all(lr.low <= x <= lr.high for x in draws) and min(draws) < 3e-4 and max(draws) > 3e-3  # log-uniform
    assert {Resample(batch)() for _ in range(100)} == {4, 8, 12, 16}
    clip = ClipToSpace(mutable)
    assert clip({"optim.lr": 0.02, "optim.batch_size": 19, "optim.pa_loss_weight": 0.5}) == {
        "optim.lr": 0.01, "optim.batch_size": 16, "optim.pa_loss_weight": 0.5}
    assert clip({"optim.lr": 5e-5, "optim.batch_size": 7})["optim.batch_size"] == 8  # x0.8 of 9 -> the grid


# -- decisions after a restore equal the uninterrupted ones (no Ray cluster) ------------------
class FakeTrial:
    def __init__(self, trial_id: str):
        self.trial_id, self.status, self.config = trial_id, "RUNNING", {}


def curve(i: int, epoch: int) -> float:
    """Learning curves that cross: trial i's validation error at `epoch`."""
    return 40.0 + 7 * ((i * 5) % 7) / (1 + 0.3 * epoch * (1 + i % 3)) - 0.5 * epoch * (i % 2)


def replay(kind: str, kill_at: int | None, trials: int = 9, epochs: int = 8, concurrent: int = 3) -> list:
    """Drive a scheduler through a sweep (round-robin epochs, a new trial whenever one ends);
    at event `kill_at`, save its state as Ray would, build a new one, restore, re-add every trial."""
    from tune_hand.sweep.schedulers import build_scheduler

    spec = spec_of({"type": kind, "grace_period": 1, "reduction_factor": 2, "max_epochs": epochs}
                   if kind != "median" else {"type": kind, "grace_period": 1, "max_epochs": epochs})
    metric = spec.metric

    def fresh():
        s, (cb,) = build_scheduler(spec)
        s.set_search_properties(metric, "min")
        return s, cb

    scheduler, callback = fresh()
    ctl, known, live, decisions, next_id, event = object(), {}, [], [], 0, 0
    while live or next_id < trials:
        while len(live) < concurrent and next_id < trials:
            known[f"t{next_id}"] = (FakeTrial(f"t{next_id}"), next_id, [0])
            scheduler.on_trial_add(ctl, known[f"t{next_id}"][0])
            live.append(f"t{next_id}")
            next_id += 1
        trial_id = live.pop(0)
        trial, i, done = known[trial_id]
        done[0] += 1
        result = {"training_iteration": done[0], metric: curve(i, done[0])}
        action = scheduler.on_trial_result(ctl, trial, result)
        decisions.append((trial_id, done[0], action))
        if action == "STOP" or done[0] == epochs:
            trial.status = "TERMINATED"
            scheduler.on_trial_complete(ctl, trial, result)
        else:
            live.append(trial_id)
        event += 1
        if event == kill_at:  # the driver dies; Ray restores callback state, then re-adds every trial
            state = pickle.loads(pickle.dumps(callback.get_state()))
            scheduler, callback = fresh()
            callback.set_state(state)
            for tid, (old, i, done) in reversed(list(known.items())):  # Ray re-adds the newest first
                known[tid] = (FakeTrial(tid), i, done)
                known[tid][0].status = old.status
                scheduler.on_trial_add(ctl, known[tid][0])
    return decisions


@pytest.mark.parametrize("kind", ["asha", "hyperband", "median"])
def test_a_restored_scheduler_decides_as_the_uninterrupted_one(kind):
    uninterrupted = replay(kind, kill_at=None)
    assert any(action == "STOP" for *_, action in uninterrupted)  # the replay exercises stopping
    for kill_at in (5, 17):
        assert replay(kind, kill_at=kill_at) == uninterrupted, kill_at


# -- samplers ------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes", "qmc"])
def test_every_sampler_continues_the_same_after_its_searcher_is_restored(sampler, tmp_path):
    """Ray saves the searcher (study, sampler, generator state) with each snapshot; a restored
    searcher suggests what the uninterrupted one would have."""
    from tune_hand.sweep.searcher import build_searcher

    space = {k: v for k, v in SPACE.items() if k != "model.channels"}
    spec = spec_of({"type": "asha"}, sampler=sampler, space=space, num_samples=20, seed=3)

    def run(searcher, ids):
        out = []
        for trial_id in ids:
            config = searcher.suggest(trial_id)
            value = 10 * abs(math.log10(config["optim.lr"]) + 3) + config["optim.batch_size"] / 4
            searcher.on_trial_result(trial_id, {"training_iteration": 1, spec.metric: value})
            searcher.on_trial_complete(trial_id, {"training_iteration": 8, spec.metric: value})
            out.append(config)
        return out

    first, later = [f"a{i}" for i in range(11)], [f"b{i}" for i in range(3)]
    whole = build_searcher(spec, max_concurrent=1)
    run(whole, first)
    resumed = build_searcher(spec, max_concurrent=1)
    run(resumed, first)
    resumed.save_to_dir(str(tmp_path))
    restored = build_searcher(spec, max_concurrent=1)
    restored.restore_from_dir(str(tmp_path))
    assert run(restored, later) == run(whole, later)


# -- real sweeps, killed and resumed ---------------------------------------------------------
SAMPLES, EPOCHS = 3, 3
# PBT needs its two trials alive together for a few epochs to exploit at all (tiny epochs take
# half a second and trials start a second or two apart): more epochs for it.
PBT_EPOCHS, PBT_SETS = 6, []


def _spec_file(tmp_path: Path, scheduler: dict) -> Path:
    raw = load_spec("quick").to_dict()
    raw["scheduler"] = {"max_epochs": PBT_EPOCHS if scheduler["type"] == "pbt" else EPOCHS, **scheduler}
    raw["num_samples"] = SAMPLES
    if scheduler["type"] == "pbt":
        # LR drops after epochs 2 and 4, so most epochs check the schedule replay.
        raw["fixed"].update({"milestones.first": 0.34, "milestones.second": 0.67, "optim.gamma": 0.5})
    path = tmp_path / "methods.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _rows(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for trial_dir in exp.glob("train_hand_pose_*"):
        lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").is_file() else []
        out[trial_dir.name.removeprefix("train_hand_pose_")] = [json.loads(line) for line in lines if line.strip()]
    return out


def _scheduler_state(exp: Path) -> dict:
    """The scheduler's part of the newest readable callback state (a SIGKILL can land while Ray
    writes one: that file is then empty)."""
    for path in sorted(exp.glob("callback-states-*.pkl"), reverse=True):
        if path.stat().st_size:
            saved = pickle.loads(path.read_bytes())  # our own experiment's file, just written
            return next(s for s in saved.values() if s and any(k in s for k in ("asha_rungs", "median", "pbt")))
    raise AssertionError(f"{exp}: no readable callback state")


def _kill_midway(spec_path: Path, tiny_data: Path, exp: Path, sets: list[str]):
    """Run the sweep in its own session; SIGKILL it once a trial ended and another has reported."""
    args = [sys.executable, "-m", "tune_hand", "search", str(spec_path), "--data", str(tiny_data),
            "--storage", str(exp.parent), "--name", exp.name]
    for item in TINY + sets:  # a later --set wins
        args += ["--set", item]
    proc = subprocess.Popen(args, env=dict(os.environ, RAY_AUTH_MODE="disabled"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, states = time.time() + 240, {}
        while time.time() < deadline and proc.poll() is None:
            states = _snapshot_states(exp) if exp.is_dir() else {}
            ended = [t for t, s in states.items() if s == "TERMINATED"]
            running = [t for t, s in states.items() if s == "RUNNING" and  # past its first checkpoint
                       len(_raw_epochs(next(exp.glob(f"*_{t}"), exp))) >= 1]
            if ended and running:
                break
            time.sleep(0.05)  # tiny epochs take half a second
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_driver_session(proc)
    return _snapshot_states(exp), _rows(exp), _scheduler_state(exp)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", [{"type": "hyperband", "grace_period": 1, "reduction_factor": 2},
                                       {"type": "median", "grace_period": 1},
                                       {"type": "pbt", "perturbation_interval": 1, "quantile": 0.5}],
                         ids=lambda s: s["type"])
def test_a_sigkilled_sweep_resumes_with_its_schedulers_state(scheduler, tiny_data, tmp_path):
    from tune_hand.cli import main
    from tune_hand.sweep import load_status

    exp = tmp_path / "st" / "m"
    sets = PBT_SETS if scheduler["type"] == "pbt" else []
    states_before, rows_before, state_before = _kill_midway(_spec_file(tmp_path, scheduler), tiny_data, exp, sets)
    ended_before = {t for t, s in states_before.items() if s == "TERMINATED"}
    assert main(["resume", str(exp)]) == 0

    status = load_status(exp)
    assert len(status["trials"]) == SAMPLES
    assert {t["state"] for t in status["trials"]} <= {"finished", "stopped early"}
    rows = _rows(exp)
    for trial_id in ended_before:  # ended before the kill: not run again
        assert rows[trial_id] == rows_before[trial_id], trial_id
    state = _scheduler_state(exp)
    kind, metric = scheduler["type"], load_spec("quick").metric

    def deduped(trial_rows):  # each epoch's last report: what the scheduler keeps
        return sorted({r["training_iteration"]: r[metric] for r in trial_rows}.items())

    if kind == "hyperband":
        assert set(state["brackets"]) == set(rows)
        assert all(state["brackets"][t] == b for t, b in state_before["brackets"].items())  # kept its bracket
        for trial_id, bracket in state["brackets"].items():
            for milestone, recorded in state["asha_rungs"][bracket]:
                reached = dict(deduped(rows[trial_id]))
                assert (trial_id in recorded) == (milestone in reached), (trial_id, milestone)
    elif kind == "median":
        assert set(state["median"]) == set(rows)  # records from before the kill came back
        for trial_id, saved in state["median"].items():
            assert sorted(saved["results"]) == deduped(rows[trial_id]), trial_id
    else:
        assert set(state["pbt"]) == set(rows)
        assert all(t["state"] == "finished" for t in status["trials"])  # PBT stops nothing
        _check_pbt_learning_rates(rows)


def _check_pbt_learning_rates(rows: dict[str, list[dict]]) -> None:
    """Every epoch trains at its own config's lr x gamma^(milestones passed), whatever checkpoint
    it resumed from; and PBT did replace some trial's lr midway."""
    from tune_hand.sweep.space import milestone_epochs

    mutated = False
    for trial_id, trial_rows in rows.items():
        for row in trial_rows:
            cfg = row["config"]
            milestones = milestone_epochs(cfg["milestones.first"], cfg["milestones.second"], PBT_EPOCHS)
            expected = cfg["optim.lr"] * cfg["optim.gamma"] ** sum(m <= row["epoch"] - 1 for m in milestones)
            assert row["lr"] == pytest.approx(expected, rel=1e-9), (trial_id, row["epoch"], row["lr"], cfg)
        mutated |= len({r["config"]["optim.lr"] for r in trial_rows}) > 1
    assert mutated, "no trial's lr was mutated: PBT never exploited"
