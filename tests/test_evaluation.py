"""Evaluating checkpoints, the submission file, scoring prediction files, bad inputs."""

import json
import zipfile

import numpy as np
import pytest
import torch

from tune_hand.checkpoint import load_checkpoint, model_from_checkpoint
from tune_hand.cli import main
from tune_hand.config import load_config
from tune_hand.data.freihand import FreiHAND
from tune_hand.errors import CheckpointError, DataError
from tune_hand.evaluation import evaluate_checkpoint, read_prediction, score_file, submission_bytes
from tune_hand.runs import run, start_run

KEYS = {"pa_mpjpe_mm", "freihand_aligned_mm", "auc_0_50mm", "mpjpe_mm", "n", "tta"}


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("small", ["optim.epochs=1", "optim.batch_size=8", "data.num_workers=0",
                                "model.channels=8", "model.blocks=2", "data.val_fraction=0.25"])
    run(start_run(cfg, synth_data, out), out)
    return out


def test_evaluate_scores_with_baselines_and_writes_submission(trained, synth_data, tmp_path):
    sub = tmp_path / "pred.zip"
    res = evaluate_checkpoint(trained / "best.pt", synth_data, tta=1, submission=sub)
    n_eval = len(FreiHAND(synth_data, "evaluation"))
    assert KEYS <= set(res) and res["n"] == n_eval and res["tta"] == 1
    assert set(res["baselines"]) == {"mean_hand_camera", "mean_hand_shape"}
    with zipfile.ZipFile(sub) as zf:
        xyz, verts = json.loads(zf.read("pred.json"))
    assert np.shape(xyz) == (n_eval, 21, 3) and np.shape(verts) == (n_eval, 778, 3)
    # Scoring the written file the way the official script would reproduces evaluate's numbers.
    scored = score_file(sub, synth_data)
    for key in ("pa_mpjpe_mm", "mpjpe_mm", "freihand_aligned_mm"):
        assert scored[key] == pytest.approx(res[key], abs=1e-4)  # exact floats in the file; float32 truth in the batch


def test_rotation_averaging_changes_the_prediction(trained, synth_data):
    plain = evaluate_checkpoint(trained, synth_data, tta=1)
    averaged = evaluate_checkpoint(trained, synth_data, tta=4)
    assert averaged["tta"] == 4 and averaged["pa_mpjpe_mm"] != plain["pa_mpjpe_mm"]


def test_val_split_is_the_runs_own_validation_split(trained, synth_data):
    res = evaluate_checkpoint(trained / "best.pt", synth_data, split="val", tta=1)
    state = load_checkpoint(trained / "best.pt")
    assert res["pa_mpjpe_mm"] == pytest.approx(state["history"][-1]["pa_mpjpe_mm"], rel=1e-4)


def test_checkpoint_carries_everything_evaluation_needs(trained):
    model, cfg, state = model_from_checkpoint(trained / "best.pt")
    assert cfg.model.channels == 8 and state["epoch"] == 1
    ranges = model.ranges_mm
    assert ranges.shape == (3, 2) and torch.all(ranges[:, 1] > ranges[:, 0])


def test_foreign_and_corrupt_checkpoints_are_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt.*not a tune-hand checkpoint"):
        load_checkpoint(foreign)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "tune-hand-checkpoint/1", "config": {}, "model": Evil(), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_prediction_file_with_wrong_count_or_shape(tmp_path):
    good = np.zeros((3, 21, 3))
    path = tmp_path / "pred.zip"
    path.write_bytes(submission_bytes(good))
    assert read_prediction(path, 3).shape == (3, 21, 3)
    with pytest.raises(DataError, match="xyz_list has 3 entries, the split has 5"):
        read_prediction(path, 5)
    bad = tmp_path / "pred.json"
    bad.write_text(json.dumps([[[[0, 0, 0]] * 21, [[0, 0]] * 21, [[0, 0, 0]] * 21], []]))
    with pytest.raises(DataError, match=r"xyz_list\[1\]"):
        read_prediction(bad, 3)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="pred.json: cannot read"):
        read_prediction(bad, 3)


def test_cli_reports_bad_checkpoint_in_one_line(tmp_path, synth_data, capsys):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"garbage")
    code = main(["evaluate", "--checkpoint", str(bad), "--data", str(synth_data)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("tune-hand: error:") and "x.pt" in err and "\n" not in err


def test_cli_evaluate_writes_json(trained, synth_data, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(trained), "--data", str(synth_data), "--tta", "2",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert KEYS <= set(data) and data["tta"] == 2
    assert "mean_hand_shape" in capsys.readouterr().out
