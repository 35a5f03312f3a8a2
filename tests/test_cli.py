"""The `tune-hand` command as a user runs it: exit codes, one-line errors, JSON outputs."""

import json
import subprocess
import sys

import pytest

from tune_hand.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tune_hand", *args], capture_output=True, text=True, timeout=600)


def test_inspect_json_keys(synth_data, capsys):
    assert main(["inspect", str(synth_data), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["unique_samples"] == 16 and info["train_images"] == 64
    assert info["eval_images"] == 8 and info["eval_has_xyz"] is True


def test_inspect_of_a_non_freihand_directory_is_one_line(tmp_path):
    proc = run_cli("inspect", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith("tune-hand: error:") and str(tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_model_info_reports_both_parameter_counts(capsys):
    assert main(["model-info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params_total"] == 19_504_391  # the paper's 19.5M, conv_head included
    assert info["params_used"] < info["params_total"]
    assert {"params_encoder", "params_decoder", "macs"} <= set(info)


def test_unknown_set_key_is_refused_before_anything_runs(tmp_path, synth_data):
    proc = run_cli("train", "--data", str(synth_data), "--out", str(tmp_path / "run"), "--config", "small",
                   "--set", "model.chanels=8")
    assert proc.returncode == 2 and "model.chanels" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_synth_bad_arguments_leave_nothing(tmp_path):
    proc = run_cli("synth", str(tmp_path / "out"), "--train", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_train_cli_then_resume(tmp_path, synth_data):
    out = tmp_path / "run"
    common = ["--config", "small", "--set", "optim.batch_size=8", "--set", "data.num_workers=0",
              "--set", "model.channels=8", "--set", "model.blocks=2"]
    proc = run_cli("train", "--data", str(synth_data), "--out", str(out), *common, "--set", "optim.epochs=1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["epochs"] == 1
    proc = run_cli("train", "--out", str(out), "--resume", "--set", "optim.epochs=2")
    assert proc.returncode == 0, proc.stderr
    assert "epoch   2/2" in proc.stderr and "epoch   1/2" not in proc.stderr


def test_resume_without_a_run_is_one_line(tmp_path):
    proc = run_cli("train", "--out", str(tmp_path / "nothing"), "--resume")
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


@pytest.mark.slow
def test_quick_demo_runs_the_whole_pipeline(tmp_path):
    """data -> sweep -> best -> retrain -> scored submission, and a second run reuses every step."""
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", str(out), "--quick")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "demo_summary.json").read_text())
    # ASHA may stop the later trial at its epoch-1 rung, depending on which reports first.
    assert summary["trials"] == 2 and summary["states"].get("finished", 0) >= 1
    assert set(summary["states"]) <= {"finished", "stopped early"}
    assert summary["rr_mpjpe_mm"] > 0 and summary["baseline_mean_hand_camera_rr_mpjpe_mm"] > 0
    assert (out / "final" / "submission.zip").is_file() and (out / "best" / "checkpoint.pt").is_file()
    assert json.loads((out / "final" / "metrics.json").read_text())["source"]["trial_id"] == summary["best_trial"]

    again = run_cli("demo", "--out", str(out), "--quick")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "data: reusing" in again.stdout and "resuming it" in again.stderr
    assert json.loads((out / "demo_summary.json").read_text())["best_trial"] == summary["best_trial"]


def test_retrain_of_something_that_is_not_a_sweep_is_one_line(tmp_path, synth_data):
    proc = run_cli("retrain", str(tmp_path / "nope"), "--data", str(synth_data), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and str(tmp_path / "nope") in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
