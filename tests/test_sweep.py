"""The sweep: the trainable's contract (no Ray cluster), and one real quick sweep (slow).

The slow tests share ONE sweep of the shipped `quick` spec (6 trials x 4 epochs, 2 at a time,
ASHA grace 1 / reduction 2) on a tiny synthetic dataset, run through the CLI.
"""

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tune_hand.checkpoint import load_checkpoint
from tune_hand.cli import main
from tune_hand.sweep import load_spec, with_overrides

from conftest import TINY, raylet_processes

METRIC = load_spec("quick").metric  # what the quick sweep optimises (rr_mpjpe_mm)


# -- the trainable, with Ray's session functions replaced -------------------------------------
class FakeSession:
    """Stands in for tune.report / tune.get_checkpoint; keeps a copy of every reported checkpoint."""

    def __init__(self, keep: Path, resume_from: Path | None = None):
        self.keep, self.resume_from, self.reports = keep, resume_from, []

    def report(self, metrics, *, checkpoint=None):
        from ray import tune

        dest = self.keep / f"epoch_{metrics['epoch']}"
        shutil.copytree(checkpoint.path, dest)
        self.reports.append((metrics, dest))
        assert isinstance(checkpoint, tune.Checkpoint)

    def get_checkpoint(self):
        from ray import tune

        return tune.Checkpoint.from_directory(self.resume_from) if self.resume_from else None


def run_trainable(monkeypatch, data, session, spec, params):
    from trainables import hand_pose

    monkeypatch.setattr(hand_pose.tune, "report", session.report)
    monkeypatch.setattr(hand_pose.tune, "get_checkpoint", session.get_checkpoint)
    trial_dir = str(session.keep / "trial")
    monkeypatch.setattr(hand_pose.tune, "get_context", lambda: type("Ctx", (), {"get_trial_dir": lambda self: trial_dir})())
    hand_pose.train_hand_pose(params, spec=spec.to_dict(), data_dir=str(data))
    return session.reports


def quick_spec(epochs):
    # Milestones pinned at fractions of the budget (the quick space itself keeps the LR constant).
    return with_overrides(load_spec("quick"), TINY + [f"optim.epochs={epochs}", "milestones.first=0.5",
                                                      "milestones.second=0.9"])


PARAMS = {"optim.lr": 1e-3, "optim.pa_loss_weight": 0.0}


@pytest.mark.slow
def test_trainable_reports_every_epoch_with_a_full_checkpoint_and_resumes(monkeypatch, tiny_data, tmp_path):
    spec = quick_spec(3)
    first = run_trainable(monkeypatch, tiny_data, FakeSession(tmp_path / "a"), spec, PARAMS)
    assert [m["epoch"] for m, _ in first] == [1, 2, 3]
    state = load_checkpoint(first[1][1])
    assert state["epoch"] == 2 and state["config"]["optim"]["milestones"] == [2, 3]
    assert "optimizer" in state and "scheduler" in state
    assert all(math.isfinite(m["pa_mpjpe_mm"]) and m["status"] == "ok" for m, _ in first)

    # Restarted from the epoch-2 checkpoint, the trial continues with epoch 3 only.
    resumed = run_trainable(monkeypatch, tiny_data, FakeSession(tmp_path / "b", resume_from=first[1][1]),
                            spec, PARAMS)
    assert [m["epoch"] for m, _ in resumed] == [3]


def test_trainable_reports_a_diverged_epoch_as_the_worst_finite_value_and_stops(monkeypatch, tiny_data, tmp_path):
    from tune_hand.objective import DIVERGED_VALUE as DIVERGED_METRIC
    from tune_hand.training import Trainer

    monkeypatch.setattr(Trainer, "train_epoch", lambda self: (math.nan, 8, False))
    reports = run_trainable(monkeypatch, tiny_data, FakeSession(tmp_path / "d"), quick_spec(3), PARAMS)
    assert len(reports) == 1
    metrics, _ = reports[0]
    assert metrics["status"] == "diverged" and metrics["diverged"] is True
    assert metrics[METRIC] == DIVERGED_METRIC
    json.dumps(metrics, allow_nan=False)  # no NaN/inf reaches Ray's result files


def test_gpu_specs_fall_back_to_cpus_on_a_cluster_without_gpus(capsys):
    from tune_hand.sweep import trial_resources

    paper = load_spec("paper")
    assert trial_resources(paper, cluster_gpus=8) == {"cpu": 4, "gpu": 1}
    assert trial_resources(paper, cluster_gpus=0) == {"cpu": 4, "gpu": 0}
    assert "no GPUs" in capsys.readouterr().err
    assert trial_resources(load_spec("quick"), cluster_gpus=0) == {"cpu": 1, "gpu": 0}
    assert capsys.readouterr().err == ""
    # A remote (autoscaling) cluster whose GPU workers have not joined yet keeps the GPU request.
    assert trial_resources(paper, cluster_gpus=0, local=False) == {"cpu": 4, "gpu": 1}
    assert "wait until GPU nodes join" in capsys.readouterr().err


def test_status_of_a_missing_experiment_is_a_user_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "no such experiment directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["best", str(tmp_path / "empty"), "--export", str(tmp_path / "out")]) == 2
    assert "not a tune-hand experiment" in capsys.readouterr().err


def test_search_refuses_a_bad_spec_before_starting_ray(tmp_path, tiny_data, capsys):
    import ray

    assert main(["search", "quick", "--data", str(tiny_data), "--storage", str(tmp_path),
                 "--set", "model.channels=0"]) == 2
    assert "model.channels" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "quick").exists()


# -- one real sweep ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_finishes_with_asha_stopping_trials_early(sweep):
    exp, seconds = sweep
    from tune_hand.sweep import load_status

    status = load_status(exp)
    spec = load_spec("quick")
    trials = status["trials"]
    assert len(trials) == spec.num_samples
    assert {t["state"] for t in trials} <= {"finished", "stopped early"}
    assert any(t["state"] == "stopped early" for t in trials)
    assert sum(t["epochs"] for t in trials) < spec.num_samples * spec.max_epochs
    stored = yaml.safe_load((exp / "tune_hand_spec.yaml").read_text())
    assert stored["fixed"]["model.channels"] == 8 and "model.channels" not in stored["space"]
    print(f"quick sweep: {seconds:.0f}s")


@pytest.mark.slow
def test_status_from_storage_lists_every_trial(sweep, capsys):
    exp, _ = sweep
    capsys.readouterr()
    assert main(["status", str(exp), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert set(status) >= {"trials", "best"}
    for t in status["trials"]:
        assert set(t) >= {"trial_id", "state", "epochs", "best_metric", "config"}
        assert t["state"] in ("finished", "stopped early") and t["epochs"] >= 1
        assert t["config"]["model.channels"] == 8 and "optim.lr" in t["config"]
    best = min(status["trials"], key=lambda t: t["best_metric"])
    assert status["best"]["trial_id"] == best["trial_id"]
    assert main(["status", str(exp)]) == 0
    assert "best:" in capsys.readouterr().out
    # Status reads storage alone: it never imports ray.
    import subprocess
    import sys

    code = ("import sys; from tune_hand.sweep import load_status; "
            f"s = load_status({str(exp)!r}); assert len(s['trials']) == 6; assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_best_exports_the_best_epoch_checkpoint_as_ray_would_choose(sweep, tmp_path, capsys):
    from ray.tune import ExperimentAnalysis

    exp, _ = sweep
    out = tmp_path / "best"
    assert main(["best", str(exp), "--export", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "config.yaml", "metrics.json", "provenance.json"}
    provenance = json.loads((out / "provenance.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    state = load_checkpoint(out)
    assert state["epoch"] == provenance["epoch"] == metrics["epoch"]
    assert provenance["spec_hash"] == json.loads((exp / "tune_hand_sweep.json").read_text())["spec_hash"]
    assert state["config"]["model"]["channels"] == 8

    # Ray's own answer, read from the same storage without a cluster: best trial over all epochs
    # (scope="all") and that trial's best checkpoint (not its latest).
    analysis = ExperimentAnalysis(str(exp), default_metric=METRIC, default_mode="min")
    trial = analysis.get_best_trial(scope="all")
    assert trial.trial_id == provenance["trial_id"]
    best_ckpt = analysis.get_best_checkpoint(trial)
    assert Path(best_ckpt.path) == (exp / provenance["checkpoint"]).parent
    assert metrics[METRIC] == pytest.approx(min(r[METRIC] for r in
                                                       analysis.trial_dataframes[trial.trial_id].to_dict("records")))
    assert main(["best", str(exp), "--export", str(out)]) == 2  # never overwrites silently


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_cleanly_and_resume_finishes_it(tiny_data, tmp_path):
    """SIGINT to the driver (Ctrl-C): Ray saves the experiment, we shut Ray down; `resume`
    continues interrupted trials from their checkpoints (no epoch is run twice)."""
    import signal
    import subprocess
    import sys

    from tune_hand.sweep import load_status

    exp = tmp_path / "st" / "r"
    # The shipped quick spec, but asking for a GPU: this machine has none, so trials fall back to CPUs.
    raw = yaml.safe_load(Path(load_spec("quick").source).read_text())
    raw["resources"] = {"gpu": 1, "cpu": 1}
    spec_file = tmp_path / "quick_gpu.yaml"
    spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    args = [sys.executable, "-m", "tune_hand", "search", str(spec_file), "--data", str(tiny_data),
            "--storage", str(tmp_path / "st"), "--name", "r", "--samples", "2"]
    for item in TINY + ["optim.epochs=8"]:  # epochs enough that Ctrl-C lands mid-trial
        args += ["--set", item]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not list(exp.glob("*/checkpoint_000000")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), out[-3000:]
    assert "tune-hand resume" in out, out[-3000:]
    assert "has no GPUs; running each trial on 1 CPU" in out
    deadline = time.time() + 20
    while raylet_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert raylet_processes() == []
    before = {t["trial_id"]: t for t in load_status(exp)["trials"]}
    assert any(t["state"] in ("running", "pending") for t in before.values()), before

    assert main(["resume", str(exp)]) == 0
    after = load_status(exp)["trials"]
    assert len(after) == 2 and {t["state"] for t in after} <= {"finished", "stopped early"}
    for trial_dir in exp.glob("train_hand_pose_*"):
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        epochs = [r["epoch"] for r in rows]
        assert epochs == list(range(1, len(epochs) + 1)), (trial_dir.name, epochs)
        # Ray's iteration count (ASHA's time_attr) carries on across the restore, like our epochs.
        assert [r["training_iteration"] for r in rows] == epochs


@pytest.mark.slow
def test_no_ray_process_outlives_the_sweep(sweep):
    import ray

    assert not ray.is_initialized()
    deadline = time.time() + 20
    while raylet_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert raylet_processes() == []


@pytest.mark.slow
def test_a_diverging_trial_is_stopped_marked_and_told_to_optuna_as_pruned(tiny_data, tmp_path, capsys):
    """optim.lr=1e10 makes every trial's loss NaN in its first epoch."""
    import glob
    import pickle

    from tune_hand.sweep import load_status, ray_trial_states

    exp = tmp_path / "d"
    args = ["search", "quick", "--data", str(tiny_data), "--storage", str(tmp_path), "--name", "d", "--samples", "2"]
    for item in TINY + ["optim.epochs=3", "optim.lr=1e10"]:
        args += ["--set", item]
    assert main(args) == 3  # as `train`: a script running search then best stops here
    assert "every trial diverged" in capsys.readouterr().err
    status = load_status(exp)
    assert [t["state"] for t in status["trials"]] == ["diverged", "diverged"]
    assert [t["epochs"] for t in status["trials"]] == [1, 1] and status["best"] is None
    assert set(ray_trial_states(exp).values()) == {"TERMINATED"}  # ended, not errored, so not retried
    for trial_dir in exp.glob("train_hand_pose_*"):
        assert len((trial_dir / "result.json").read_text().splitlines()) == 1
        assert not (trial_dir / "error.txt").exists()
    # Our own experiment's searcher state, just written: TPE learns this region is bad (never RUNNING).
    study = pickle.loads(Path(sorted(glob.glob(str(exp / "searcher-state-*.pkl")))[-1]).read_bytes())["_ot_study"]
    assert [(t.state.name, t.user_attrs["tune_hand_state"]) for t in study.trials] == [("PRUNED", "diverged")] * 2
    capsys.readouterr()
    assert main(["best", str(exp), "--export", str(tmp_path / "b")]) == 2
    assert f"no trial has reported {METRIC}" in capsys.readouterr().err


def test_a_local_sweep_without_the_imagenet_weights_it_asks_for_stops_before_ray(tiny_data, tmp_path, capsys):
    args = ["search", "quick", "--data", str(tiny_data), "--storage", str(tmp_path), "--name", "w"]
    for item in ["model.width_coefficient=null", "model.depth_coefficient=null", "model.pretrained=true",
                 f"model.weights={tmp_path / 'absent.pth'}"]:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "absent.pth: no such file" in err and "model.pretrained=false" in err
    assert not (tmp_path / "w").exists()  # nothing started, nothing written


@pytest.mark.slow
def test_a_sweep_whose_every_trial_errors_exits_non_zero(tiny_data, tmp_path, capsys):
    """A weights file that is not one: each trial fails building its model."""
    from tune_hand.sweep import load_status

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    args = ["search", "quick", "--data", str(tiny_data), "--storage", str(tmp_path), "--name", "e", "--samples", "2"]
    for item in TINY + ["optim.epochs=2", "model.width_coefficient=null", "model.depth_coefficient=null",
                        "model.pretrained=true", f"model.weights={bad}"]:
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no trial produced a result (2 error)" in err and "error.txt" in err
    assert [t["state"] for t in load_status(tmp_path / "e")["trials"]] == ["error", "error"]
    assert all("bad.pth: cannot read ImageNet weights" in p.read_text() for p in (tmp_path / "e").glob("*/error.txt"))


def test_best_exports_the_best_epoch_when_the_last_one_is_worse(tiny_data, tmp_path):
    """A trial whose metric rises after epoch 2: `best` hands back epoch 2's checkpoint, not epoch 3's."""
    from tune_hand.checkpoint import save_checkpoint
    from tune_hand.sweep import spec_hash, trial_config
    from tune_hand.sweep import SPEC_FILE, SWEEP_FILE, export_best, load_status
    from tune_hand.training import Trainer

    spec = quick_spec(3)
    exp = tmp_path / "sweeps" / "b"
    exp.mkdir(parents=True)
    (exp / SPEC_FILE).write_text(spec.to_yaml())
    (exp / SWEEP_FILE).write_text(json.dumps({"spec_hash": spec_hash(spec), "name": "b", "data_dir": str(tiny_data)}))
    trainer = Trainer(trial_config(spec, PARAMS), tiny_data)
    states = [trainer.state_dict() for _ in trainer.epochs()]  # real checkpoints of epochs 1, 2, 3
    for trial_id, values in (("aaaa", [41.0, 30.0, 35.0]), ("bbbb", [40.0, 33.0, 31.0])):
        trial = exp / f"train_hand_pose_{trial_id}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(PARAMS))
        rows = []
        for epoch, state in enumerate(states, 1):
            save_checkpoint(trial / f"checkpoint_{epoch - 1:06d}" / "checkpoint.pt", state)
        for epoch, value in enumerate(values, 1):
            rows.append(json.dumps({"trial_id": trial_id, "epoch": epoch, "training_iteration": epoch,
                                    METRIC: value, "checkpoint_dir_name": f"checkpoint_{epoch - 1:06d}"}))
        (trial / "result.json").write_text("\n".join(rows) + "\n")
    out = export_best(exp, tmp_path / "best")
    assert (out["trial_id"], out["epoch"], out["value"]) == ("aaaa", 2, 30.0)
    assert (tmp_path / "best" / "checkpoint.pt").read_bytes() == \
        (exp / "train_hand_pose_aaaa" / "checkpoint_000001" / "checkpoint.pt").read_bytes()
    status = load_status(exp)
    assert status["best"]["trial_id"] == "aaaa" and status["best"]["best_epoch"] == 2
