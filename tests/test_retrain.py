"""`tune-hand retrain`: the best trial trained on training + validation, scored with rotation averaging.

The experiment is built by hand in Ray's layout (one trial directory, result.json, a checkpoint
per reported epoch) from a real one-epoch run, so `sweep.export_best` runs unchanged without Ray.
"""

import argparse
import json
import shutil

import pytest
import torch

from tune_hand.checkpoint import load_checkpoint, save_checkpoint
from tune_hand.config import Config, load_config
from tune_hand.data.freihand import FreiHAND
from tune_hand.errors import TuneHandError
from tune_hand.evaluation import read_prediction, score_file
from tune_hand.cli.retrain import add_commands as add_command
from tune_hand.retrain import rescale_milestones, retrain, retrain_config
from tune_hand.runs import start_run
from tune_hand.sweep import load_spec, spec_hash
from tune_hand.sweep import SPEC_FILE, SWEEP_FILE, export_best

# The trial's config: a 4-epoch budget (milestones [2, 3]) that ASHA stopped after epoch 1.
TRIAL = ["optim.epochs=4", "optim.milestones=[2, 3]", "optim.batch_size=8", "data.num_workers=0",
         "model.channels=8", "model.blocks=2", "data.val_fraction=0.25", "eval.batch_size=16",
         "train.threads=1"]  # one thread: 2 threads on a shared 2-core machine run 10x slower


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    """train.threads sets torch's process-wide thread count; give the other test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def add_trial(exp, trial_id, checkpoint, metric):
    """A trial directory as Ray writes it: params.json, result.json, checkpoint_000000/checkpoint.pt."""
    trial = exp / f"train_hand_pose_{trial_id}"
    (trial / "checkpoint_000000").mkdir(parents=True)
    shutil.copyfile(checkpoint, trial / "checkpoint_000000" / "checkpoint.pt")
    (trial / "params.json").write_text(json.dumps({"optim.lr": 1e-3}))
    row = {"trial_id": trial_id, "epoch": 1, "training_iteration": 1, load_spec("quick").metric: metric,
           "checkpoint_dir_name": "checkpoint_000000"}
    (trial / "result.json").write_text(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def trial_checkpoint(synth_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trial")
    trainer = start_run(load_config("small", TRIAL), synth_data, run_dir)
    next(trainer.epochs())
    return save_checkpoint(run_dir / "checkpoint.pt", trainer.state_dict())


def make_experiment(root, checkpoint, data):
    spec = load_spec("quick")
    root.mkdir(parents=True)
    (root / SPEC_FILE).write_text(spec.to_yaml())
    (root / SWEEP_FILE).write_text(json.dumps({"spec_hash": spec_hash(spec), "name": root.name,
                                               "data_dir": str(data)}))
    add_trial(root, "t1", checkpoint, 30.0)
    return root


@pytest.fixture(scope="module")
def experiment(trial_checkpoint, synth_data, tmp_path_factory):
    return make_experiment(tmp_path_factory.mktemp("sweeps") / "q1", trial_checkpoint, synth_data)


@pytest.fixture(scope="module")
def export(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "best"
    export_best(experiment, out)
    return out


@pytest.fixture(scope="module")
def retrained(experiment, synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("retrain") / "final"
    lines = []
    summary = retrain(experiment, synth_data, out, epochs=2, tta=4, progress=lines.append)
    return out, summary, lines


# -- the schedule ------------------------------------------------------------------------------
@pytest.mark.parametrize("milestones, old, new, expected", [
    ([100, 140], 145, 145, [100, 140]),
    ([100, 140], 145, 290, [200, 280]),
    ([100, 140], 145, 3, [2, 3]),
    ([2, 3], 4, 2, [1, 2]),
    ([8, 11], 12, 1, [1]),  # both land on epoch 1: the second is past the end and dropped
    ([1, 2], 10, 2, [1, 2]),  # both round to 0: clamped to epoch 1, the second moved to 2
    ([3, 9], 6, 6, [3, 6]),  # a milestone past the budget never fired; it stays harmless at the end
])
def test_rescale_milestones_keeps_them_increasing_within_the_budget(milestones, old, new, expected):
    assert rescale_milestones(milestones, old, new) == expected


def test_retrain_config_rescales_milestones_unless_they_are_set():
    trial = load_config("small", TRIAL)
    assert retrain_config(trial, epochs=8).optim.milestones == [4, 6]
    assert retrain_config(trial).optim == trial.optim
    kept = retrain_config(trial, epochs=8, overrides=["optim.milestones=[5]", "optim.lr=0.01"])
    assert kept.optim.milestones == [5] and kept.optim.lr == 0.01 and kept.optim.epochs == 8
    assert retrain_config(trial, epochs=8).model == trial.model  # same init: model.pretrained etc. untouched


# -- a full retrain from an experiment directory ----------------------------------------------
def test_retrain_fits_training_plus_validation_for_the_requested_epochs(retrained, synth_data):
    out, summary, lines = retrained
    n_train = len(FreiHAND(synth_data, "training"))
    cfg = Config.from_yaml(out / "config.yaml")
    assert cfg.optim.epochs == 2 and cfg.optim.milestones == [1, 2]  # [2, 3] of 4 epochs, rescaled
    assert cfg.model.channels == 8 and cfg.data.val_fraction == 0.25  # the trial's config otherwise
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # Every training image, validation included, in every epoch (64 = 8 batches of 8).
    assert all(round(r["images_per_s"] * r["seconds"]) == n_train for r in rows)
    assert "pa_mpjpe_mm" not in rows[0]  # nothing left to validate on
    assert rows[1]["lr"] == pytest.approx(rows[0]["lr"] * 0.1)  # milestone 1 fired
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_images"] == n_train and metrics["epochs"] == 2
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    assert (out / "checkpoint.pt").read_bytes() == (out / "train" / "checkpoint.pt").read_bytes()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "train" / "tb").iterdir())
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert summary["epochs"] == 2 and summary["trial_id"] == "t1"


def test_retrain_writes_scores_with_and_without_rotation_averaging(retrained, synth_data, experiment):
    out, summary, _ = retrained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scores_available"] and metrics["tta"] == 4 and metrics["n"] == 8
    keys = {"pa_mpjpe_mm", "rr_mpjpe_mm", "freihand_aligned_mm", "auc_0_50mm", "mpjpe_mm"}
    assert set(metrics["scores"]) == keys == set(metrics["scores_no_tta"])
    assert metrics["scores"] != metrics["scores_no_tta"]
    assert metrics["tta_gain_mm"] == pytest.approx(metrics["scores_no_tta"]["pa_mpjpe_mm"]
                                                   - metrics["scores"]["pa_mpjpe_mm"])
    assert set(metrics["baselines"]) == {"mean_hand_camera", "mean_hand_shape"}
    source = metrics["source"]
    assert source["kind"] == "experiment" and source["trial_id"] == "t1" and source["epoch"] == 1
    assert source["spec_hash"] == json.loads((experiment / SWEEP_FILE).read_text())["spec_hash"]
    assert metrics["train_seconds"] > 0 and metrics["seconds"] >= metrics["eval_seconds"] > 0
    assert summary["pa_mpjpe_mm"] == metrics["scores"]["pa_mpjpe_mm"]
    # The submission is the rotation-averaged prediction, in FreiHAND's format.
    assert read_prediction(out / "submission.zip", 8).shape == (8, 21, 3)
    assert score_file(out / "submission.zip", synth_data)["pa_mpjpe_mm"] == \
        pytest.approx(metrics["scores"]["pa_mpjpe_mm"], abs=1e-4)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_rerun_of_a_finished_retrain_reuses_its_export_and_run(retrained, experiment, synth_data):
    out, summary, _ = retrained
    provenance = (out / "best" / "provenance.json").read_text()
    lines = []
    again = retrain(experiment, synth_data, out, epochs=2, tta=4, progress=lines.append)
    assert (out / "best" / "provenance.json").read_text() == provenance
    assert not any(line.startswith("epoch ") for line in lines)  # nothing left to train
    assert again["pa_mpjpe_mm"] == pytest.approx(summary["pa_mpjpe_mm"])


def test_an_export_the_sweep_has_since_superseded_is_refused(trial_checkpoint, synth_data, tmp_path):
    exp = make_experiment(tmp_path / "q2", trial_checkpoint, synth_data)
    out = tmp_path / "final"
    export_best(exp, out / "best")  # as an interrupted retrain leaves it
    add_trial(exp, "t2", trial_checkpoint, 20.0)  # the resumed sweep found a better trial
    with pytest.raises(TuneHandError, match=r"best: holds trial t1 epoch 1, but the best of .* is now trial t2"):
        retrain(exp, synth_data, out, epochs=1, progress=lambda line: None)
    assert not (out / "train").exists()


# -- resume ----------------------------------------------------------------------------------
def test_interrupted_retrain_resumes_and_a_changed_config_is_refused(export, retrained, synth_data, tmp_path):
    out = tmp_path / "final"

    def ctrl_c_after_epoch_1(line):
        if line.startswith("epoch   1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retrain(export, synth_data, out, epochs=2, tta=1, progress=ctrl_c_after_epoch_1)
    assert load_checkpoint(out / "train" / "checkpoint.pt")["epoch"] == 1
    assert not (out / "metrics.json").exists() and not (out / "checkpoint.pt").exists()

    lines = []
    retrain(export, synth_data, out, epochs=2, tta=1, progress=lines.append)
    assert [line.split("/")[0] for line in lines if line.startswith("epoch ")] == ["epoch   2"]
    resumed, straight = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(retrained[0] / "checkpoint.pt")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for key, tensor in straight["model"].items():  # same weights as the uninterrupted retrain
        assert torch.equal(tensor, resumed["model"][key]), key
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tta"] == 1 and metrics["scores"] == metrics["scores_no_tta"]
    assert metrics["source"]["kind"] == "export"

    with pytest.raises(TuneHandError, match=r"train: holds a retrain of another config \(optim.milestones.*"
                                            r"optim.epochs: 2 -> 3"):
        retrain(export, synth_data, out, epochs=3, progress=lambda line: None)
    with pytest.raises(TuneHandError, match=r"optim.lr: 0.001 -> 0.002"):
        retrain(export, synth_data, out, epochs=2, overrides=["optim.lr=0.002"], progress=lambda line: None)


# -- without ground truth, and bad inputs -----------------------------------------------------
def test_evaluation_without_ground_truth_still_writes_the_submission(export, make_freihand, tmp_path, capsys):
    data = make_freihand(tmp_path / "fh", n_unique=4, versions=4, n_eval=3, image_size=64, with_eval_xyz=False)
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    args = parser.parse_args(["retrain", str(export), "--data", str(data), "--out", str(tmp_path / "final"),
                              "--epochs", "1", "--tta", "2", "--set", "optim.batch_size=4"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["scores_available"] is False and summary["pa_mpjpe_mm"] is None
    assert "no evaluation_xyz.json" in captured.err
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert metrics["scores"] is None and metrics["baselines"] is None and metrics["tta"] == 2
    assert "no evaluation_xyz.json" in metrics["note_scores"]
    assert read_prediction(summary["submission"], 3).shape == (3, 21, 3)


def test_cli_prints_scores_beside_the_baselines(export, retrained, synth_data, tmp_path, capsys):
    out = tmp_path / "final"
    shutil.copytree(retrained[0] / "train", out / "train")  # a finished run: only evaluation is left
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    args = parser.parse_args(["retrain", str(export), "--data", str(synth_data), "--out", str(out),
                              "--epochs", "2", "--tta", "2"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert "mean_hand_shape" in captured.err and "model (tta 2)" in captured.err and "model (tta 1)" in captured.err
    assert json.loads(captured.out)["tta"] == 2


@pytest.mark.parametrize("files, missing", [
    (None, "no such directory"),
    ([], f"no {SWEEP_FILE}.*no config.yaml, provenance.json"),
    (["config.yaml"], "no provenance.json"),
])
def test_a_bad_source_is_a_one_line_error_naming_it(files, missing, synth_data, tmp_path):
    source = tmp_path / "src"
    if files is not None:
        source.mkdir()
        for name in files:
            (source / name).write_text("{}")
    with pytest.raises(TuneHandError, match=missing) as err:
        retrain(source, synth_data, tmp_path / "out", progress=lambda line: None)
    assert str(source) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_dataset_without_an_evaluation_split_is_refused_before_training(export, make_freihand, tmp_path):
    data = make_freihand(tmp_path / "fh", n_unique=4, n_eval=0, image_size=64)
    with pytest.raises(TuneHandError, match="evaluation"):
        retrain(export, data, tmp_path / "out", epochs=1, progress=lambda line: None)
    assert not (tmp_path / "out" / "train").exists()
