"""`tune-hand train` commits checkpoint.pt, best.pt and metrics.jsonl together, once per epoch: SIGKILLed
between any two writes of a commit, or at random times, the three agree (metrics rows 1..E for checkpoint.pt's
epoch E, best.pt = the state's best_epoch), and a resume ends with every epoch's row and no temporaries."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

from tune_hand.checkpoint import load_checkpoint
from tune_hand.io import MANIFEST, CommittedFiles
from tune_hand.runs import run_files

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 5
TRAIN = ["--config", "small", *(a for item in [*TINY, "train.image_every=0", f"optim.epochs={EPOCHS}"]
                                for a in ("--set", item))]
KILL_ENV = "TUNE_HAND_TEST_KILL_AT"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith((".next", ".tmp")))


def _files_agree(out: Path) -> int:
    """Assert what a kill may leave: before the repair, every file is the manifest's or its staged copy is;
    after it (what `start_run` does), the three agree and no temporary is left. Returns the epoch E."""
    manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).exists() else {"files": {}}
    for name, digest in manifest["files"].items():
        staged = out / f".{name}.next"
        in_place = (out / name).exists() and _sha(out / name) == digest
        assert in_place or (staged.exists() and _sha(staged) == digest), name
    run_files(out)
    assert _temporaries(out) == []
    if not (out / "checkpoint.pt").exists():  # killed in epoch 1, before its commit
        assert not (out / "metrics.jsonl").exists() and not (out / "best.pt").exists()
        return 0
    state = load_checkpoint(out / "checkpoint.pt")
    epoch = state["epoch"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epoch + 1))
    assert load_checkpoint(out / "best.pt")["epoch"] == state["best_epoch"] >= 1
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["epoch"] == epoch and manifest["best_epoch"] == state["best_epoch"]
    assert {name: _sha(out / name) for name in manifest["files"]} == manifest["files"]
    return epoch


def _train(out: Path, data: Path | None, kill_at: str | None = None) -> subprocess.Popen:
    args = ["--data", str(data)] if data else ["--resume"]
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env.update({"PYTHONPATH": str(REPO), **({KILL_ENV: kill_at} if kill_at else {})})
    return subprocess.Popen([sys.executable, "-m", "tune_hand", "train", "--out", str(out), *args, *TRAIN],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_train_killed_anywhere_keeps_its_files_in_agreement_and_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    epochs = [0]
    # Deterministic kills inside epoch 1's commit (always a best epoch): before its commit point (dropped),
    # then between the renames after it (rolled forward). Then SIGKILLs at random times.
    for kill_at in ["staged best.pt", "moved best.pt", None, None]:
        proc = _train(out, tiny_data if epochs[-1] == 0 and not out.exists() else None, kill_at)
        if kill_at:
            proc.communicate(timeout=120)
            assert proc.returncode == -signal.SIGKILL, (kill_at, proc.stderr)
        else:
            for line in proc.stderr:  # the run has started (its start repaired the directory)
                if line.startswith("training"):
                    break
            time.sleep(rng.uniform(0.0, 1.5))
            proc.kill()
            proc.communicate(timeout=60)
        epochs.append(_files_agree(out))
        assert epochs[-1] >= epochs[-2], (seed, epochs)
    assert epochs[1:3] == [0, 1], epochs

    proc = _train(out, None)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _files_agree(out) == EPOCHS and _temporaries(out) == [], (seed, epochs)


_COMMITS = """
import os, sys
from tune_hand.io import CommittedFiles
files = CommittedFiles(sys.argv[1], ["a", "b", "c"])
files.commit({"a": b"a1", "b": b"b1"}, epoch=1)
os.environ["TUNE_HAND_TEST_KILL_AT"] = sys.argv[2]
files.commit({"a": b"a2", "c": b"c2"}, epoch=2)  # b unchanged, c new
"""
_BEFORE = ["staged a", "staged c", "staged commit.json"]
_AFTER = ["committed", "moved a", "moved c"]


@pytest.mark.parametrize("point", _BEFORE + _AFTER)
def test_commit_killed_between_any_two_writes_is_one_commit_or_the_other(tmp_path, point):
    proc = subprocess.run([sys.executable, "-c", _COMMITS, str(tmp_path), point], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    files = CommittedFiles(tmp_path, ["a", "b", "c"])  # the repair
    contents = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != MANIFEST}
    if point in _BEFORE:
        assert contents == {"a": b"a1", "b": b"b1"} and files.manifest["epoch"] == 1
    else:
        assert contents == {"a": b"a2", "b": b"b1", "c": b"c2"} and files.manifest["epoch"] == 2
    assert files.digests == {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}


def test_a_run_directory_from_before_commits_keeps_its_files(tmp_path):
    (tmp_path / "a").write_bytes(b"old")
    (tmp_path / ".a.tmp").write_bytes(b"half")  # what the earlier writer left after a kill
    files = CommittedFiles(tmp_path, ["a", "b"])
    assert files.digests == {"a": hashlib.sha256(b"old").hexdigest()} and not (tmp_path / ".a.tmp").exists()
    files.commit({"b": b"new"}, epoch=1)
    assert json.loads((tmp_path / MANIFEST).read_text())["files"].keys() == {"a", "b"}
