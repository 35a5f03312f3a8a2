"""A sweep written by an older tune-hand (commit 98b7c0e) still works with this code.

`tests/fixtures/sweep_98b7c0e.tar.gz` is an interrupted sweep made by that commit's code
(`tests/fixtures/make_old_sweep.py` says exactly how): its driver was SIGKILLed with one trial
finished, one stopped early by ASHA, one mid-way with a checkpoint, one started without a
result and one never created. Ray's pickles in it (tuner.pkl, searcher-state-*.pkl,
search_gen_state-*.json, experiment_state-*.json) name that code's classes and functions by
module path: tune_hand.search_alg.{ResumableASHA, AshaStateCallback, LiveTable,
TrialStateOptunaSearch}, tune_hand.spec.{Spec, Param, Scheduler, define_by_run},
tune_hand.config.{Config, ModelConfig, ...}, tune_hand.sweep.trial_dirname; Ray also checks that
the restored trainable is still called `train_hand_pose`. Moving any of them without a re-export
breaks `resume` of every sweep already on disk.

The CLI of this checkout (whatever `python -m tune_hand` imports: run with
PYTHONPATH=/path/to/old/checkout to point it at another) reads and continues that sweep after
it was extracted elsewhere (Ray stores absolute paths; the experiment and the dataset moved):
`status` and `status --json`, `resume EXP --data NEW` to completion with exactly num_samples
trials and the ended trials untouched, `best --export` of the best epoch's checkpoint, `report`.
The sweep predates signed state: `resume` refuses it (one line, nothing run) until the user
trusts it with `tune-hand trust EXP`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import kill_driver_session

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent / "fixtures"
META = json.loads((FIXTURES / "sweep_98b7c0e.json").read_text())
TRIALS = META["trials"]
ENDED = {t for t, info in TRIALS.items() if info["ray_status"] == "TERMINATED"}
IN_FLIGHT = {t for t, info in TRIALS.items() if info["ray_status"] == "RUNNING" and info["snapshot_checkpoint"]}


def _env() -> dict[str, str]:
    return dict(os.environ, RAY_AUTH_MODE="disabled")


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tune_hand", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(trial_dir: Path) -> dict[str, tuple[str, int]]:
    """Every file of a trial directory: relative path -> (sha256, mtime in ns)."""
    return {str(p.relative_to(trial_dir)): (_sha(p), p.stat().st_mtime_ns)
            for p in sorted(trial_dir.rglob("*")) if p.is_file()}


def _rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def _newest_pickle(exp: Path, pattern: str):
    # Ray's own files of this test's experiment (the fixture made by make_old_sweep.py, then the
    # resume above): trusted input.
    return pickle.loads(Path(max(glob.glob(str(exp / pattern)))).read_bytes())


def _say(proc: subprocess.CompletedProcess | None) -> str:
    if proc is None:
        return "(not run)"
    return f"rc {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def old_sweep(tmp_path_factory):
    """The fixture extracted into a new directory, its dataset re-rendered, `status` run on it
    then `resume` (refused: unsigned), `trust` and `resume` again. Returns what each step saw; the tests
    below judge it."""
    from tune_hand.data.synthetic import render_dataset

    root = tmp_path_factory.mktemp("oldsweep")
    with tarfile.open(FIXTURES / "sweep_98b7c0e.tar.gz") as tar:
        tar.extractall(root / "storage", filter="data")
    exp = root / "storage" / META["experiment"]
    data = root / "data"
    render_dataset(data, **META["dataset"])
    which = subprocess.run([sys.executable, "-c", "import tune_hand; print(tune_hand.__file__)"], cwd=root,
                           env=_env(), capture_output=True, text=True, check=False)
    out = {"root": root, "exp": exp, "data": data, "tune_hand": which.stdout.strip() or which.stderr[-500:]}
    out["before"] = {t: _files(exp / TRIALS[t]["dir"]) for t in TRIALS if TRIALS[t]["dir"]}
    out["rows_before"] = {t: _rows(exp / TRIALS[t]["dir"]) for t in TRIALS if TRIALS[t]["dir"]}
    out["status"] = _cli("status", str(exp), cwd=root)
    out["status_json"] = _cli("status", str(exp), "--json", cwd=root)

    key = ["--key-file", str(root / "key")]
    files = _files(exp)
    out["unsigned_resume"] = _cli("resume", str(exp), "--data", str(data), *key, cwd=root)
    out["unsigned_untouched"] = _files(exp) == files
    out["trust"] = _cli("trust", str(exp), *key, cwd=root)
    proc = subprocess.Popen([sys.executable, "-m", "tune_hand", "resume", str(exp), "--data", str(data), *key],
                            cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of Ray outlived the driver, nothing else
        except ProcessLookupError:
            pass
        kill_driver_session(proc)
    out["resume"] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    out["status_after"] = _cli("status", str(exp), "--json", cwd=root)
    return out


def test_the_re_rendered_dataset_is_what_the_old_trials_saw(old_sweep):
    data = old_sweep["data"]
    for name in META["label_files"]:
        saw = np.asarray(json.loads((old_sweep["root"] / "storage" / "data_labels" / name).read_text()))
        now = np.asarray(json.loads((data / name).read_text()))
        assert saw.shape == now.shape and np.allclose(saw, now, rtol=0, atol=1e-9), name
    images = hashlib.sha256(b"".join(_sha(f).encode() for f in sorted(data.rglob("*.jpg")))).hexdigest()
    if images != META["images_sha256"]:  # JPEG bytes may change with OpenCV; the labels are what matter
        warnings.warn("the re-rendered images differ in bytes from those the fixture's trials saw")


def test_status_reads_the_old_sweep(old_sweep):
    text, js = old_sweep["status"], old_sweep["status_json"]
    assert text.returncode == 0, _say(text)
    assert f"{len(TRIALS)}/{META['num_samples']} trials" in text.stdout, _say(text)
    assert js.returncode == 0, _say(js)
    status = json.loads(js.stdout)
    assert status["num_samples"] == META["num_samples"] and status["max_epochs"] == META["max_epochs"]
    got = {t["trial_id"]: (t["state"], t["epochs"]) for t in status["trials"]}
    assert got == {t: (info["state"], max(info["epochs"], default=0)) for t, info in TRIALS.items()}
    assert {"finished", "stopped early", "running"} <= {s for s, _ in got.values()}
    assert status["best"]["trial_id"] in TRIALS


def test_an_unsigned_old_sweep_resumes_only_once_trusted(old_sweep):
    refused, trust = old_sweep["unsigned_resume"], old_sweep["trust"]
    assert refused.returncode == 2, _say(refused)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "unsigned" in lines[0] and f"tune-hand trust {old_sweep['exp']}" in lines[0], lines
    assert old_sweep["unsigned_untouched"]  # refused before Ray: not a file written or touched
    assert trust.returncode == 0, _say(trust)
    signed = json.loads(trust.stdout)["signed"]
    assert "tuner.pkl" in signed and any(s.startswith("searcher-state-") for s in signed), signed
    assert all(f"signing {s}" in trust.stderr for s in signed), trust.stderr


def test_resume_finishes_the_sweep_without_rerunning_ended_trials(old_sweep):
    exp, resume = old_sweep["exp"], old_sweep["resume"]
    where = f"(tune_hand from {old_sweep['tune_hand']})\n{_say(resume)}"
    assert resume.returncode == 0, where
    assert old_sweep["status_after"].returncode == 0, _say(old_sweep["status_after"])
    status = json.loads(old_sweep["status_after"].stdout)
    trials = {t["trial_id"]: t for t in status["trials"]}
    assert len(trials) == META["num_samples"], where  # none lost, none beyond num_samples
    assert set(TRIALS) < set(trials)
    for trial_id in TRIALS:  # every trial of the old sweep ended now
        assert trials[trial_id]["state"] in ("finished", "stopped early"), (trial_id, trials[trial_id], where)

    for trial_id in ENDED:  # ended before the kill: not run again, not a byte or an mtime changed
        trial_dir = exp / TRIALS[trial_id]["dir"]
        assert _files(trial_dir) == old_sweep["before"][trial_id], trial_id
        for rel, digest in TRIALS[trial_id]["sha256"].items():  # and the fixture is the one recorded
            assert _sha(trial_dir / rel) == digest, (trial_id, rel)
        assert trials[trial_id]["state"] == TRIALS[trial_id]["state"]

    for trial_id in IN_FLIGHT:  # continued from the checkpoint the snapshot held, not from scratch
        rows = _rows(exp / TRIALS[trial_id]["dir"])
        restored_at = TRIALS[trial_id]["snapshot_epoch"]
        new = [r for r in rows if r["epoch"] > restored_at]
        assert new and new[0]["epoch"] == restored_at + 1 and new[0]["iterations_since_restore"] == 1, \
            (trial_id, [(r["epoch"], r["iterations_since_restore"]) for r in rows])
        kept = [r for r in rows if r["epoch"] <= restored_at]
        assert kept == [r for r in old_sweep["rows_before"][trial_id] if r["epoch"] <= restored_at], trial_id
        assert sorted(r["epoch"] for r in rows) == list(range(1, max(r["epoch"] for r in rows) + 1)), trial_id

    # The old searcher's Optuna study and the old callback's ASHA rungs were restored and went on.
    study = _newest_pickle(exp, "searcher-state-*.pkl")["_ot_study"]
    assert len(study.trials) == META["num_samples"]
    ids = _newest_pickle(exp, "searcher-state-*.pkl")["_ot_trials"]
    for trial_id in TRIALS:
        assert study.trials[ids[trial_id].number].state.name in ("COMPLETE", "PRUNED"), trial_id
    saved = _newest_pickle(exp, "callback-states-*.pkl")
    rungs = next(s["asha_rungs"] for s in saved.values() if s and "asha_rungs" in s)
    first_rung = {int(m): r for m, r in rungs[0]}[1]
    assert ENDED | IN_FLIGHT <= set(first_rung)


def test_trials_created_after_the_resume_of_a_moved_sweep_run_in_it(old_sweep):
    exp = old_sweep["exp"]
    status = json.loads(old_sweep["status_after"].stdout)
    new = [t for t in status["trials"] if t["trial_id"] not in TRIALS]
    assert new
    for t in new:
        assert t["state"] in ("finished", "stopped early"), (t, _say(old_sweep["resume"]))
        assert _rows(exp / t["dir"]), t
    assert not Path(META["storage_when_made"]).exists()


def test_best_exports_the_best_epochs_checkpoint(old_sweep, tmp_path):
    exp = old_sweep["exp"]
    status = json.loads(old_sweep["status_json"].stdout)
    metric = status["metric"]
    assert status["mode"] == "min"
    best = None  # over every trial-epoch that kept a checkpoint (Ray's scope="all")
    for trial_dir in sorted(p for p in exp.iterdir() if (p / "params.json").is_file()):
        by_epoch = {r["epoch"]: r for r in _rows(trial_dir)}  # a re-reported epoch: the later row
        for row in by_epoch.values():
            ckpt = trial_dir / str(row.get("checkpoint_dir_name")) / "checkpoint.pt"
            if not row.get("diverged") and ckpt.is_file() and (best is None or row[metric] < best[0][metric]):
                best = (row, ckpt)
    proc = _cli("best", str(exp), "--export", str(tmp_path / "best"), cwd=old_sweep["root"])
    assert proc.returncode == 0, _say(proc)
    provenance = json.loads((tmp_path / "best" / "provenance.json").read_text())
    assert (provenance["trial_id"], provenance["epoch"]) == (best[0]["trial_id"], best[0]["epoch"])
    assert (tmp_path / "best" / "checkpoint.pt").read_bytes() == best[1].read_bytes()
    assert (tmp_path / "best" / "config.yaml").is_file() and (tmp_path / "best" / "metrics.json").is_file()


def test_report_of_the_old_sweep(old_sweep, tmp_path):
    # --data: the sweep's tune_hand_sweep.json still names the dataset where the old sweep ran.
    proc = _cli("report", str(old_sweep["exp"]), "--out", str(tmp_path / "report"), "--data", str(old_sweep["data"]),
                cwd=old_sweep["root"])
    assert proc.returncode == 0, _say(proc)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (tmp_path / "report" / "index.html").is_file()
    assert out["missing"] == {} and {"history.png", "asha.png", "predictions.png"} <= set(out["figures"]), out
