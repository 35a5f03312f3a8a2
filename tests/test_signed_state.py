"""Signed sweep state (`tune_hand/sweep/signing.py`): a resume unpickles nothing it cannot verify.

The unit tests build experiment directories by hand (no Ray). The sweep tests run one real tiny
sweep, SIGKILL its driver at a random moment, check that what it left verifies, that tampered or
extra pickles, a wrong, missing or loose key are each refused with one line before anything is
unpickled, and that the sweep then resumes to the end and still verifies.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, kill_driver_session
from tune_hand.errors import TuneHandError
from tune_hand.sweep import signing
from tune_hand.sweep.signing import HISTORY, MANIFEST, Signer, load_key, trust_experiment, verify_experiment


class _Evil:
    """A pickle that, when loaded, creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Evil(marker))


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def key(tmp_path) -> Path:
    path = tmp_path / "keys" / "key"
    load_key(path, create=True)
    return path


@pytest.fixture
def fake_exp(tmp_path) -> Path:
    """A directory holding what Ray would unpickle, and files it would not."""
    exp = tmp_path / "exp"
    (exp / "train_a").mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"tuner")
    (exp / "experiment_state-2024-01-01_00-00-00.json").write_text('{"trial_data": []}')
    (exp / "searcher-state-2024-01-01_00-00-00.pkl").write_bytes(b"searcher")
    (exp / "train_a" / "params.pkl").write_bytes(b"params")
    (exp / "train_a" / "result.json").write_text('{"epoch": 1}\n')
    return exp


# -- the key ---------------------------------------------------------------------------------
def test_a_key_is_made_on_first_use_at_mode_0600_and_then_reused(tmp_path, monkeypatch):
    path = tmp_path / "config" / "tune-hand" / "key"
    monkeypatch.setenv("TUNE_HAND_KEY_FILE", str(path))
    first = load_key(create=True)
    assert first.path == path and path.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    assert load_key().secret == first.secret and load_key(create=True).id == first.id


def test_the_default_key_lives_in_the_users_config(monkeypatch):
    monkeypatch.delenv("TUNE_HAND_KEY_FILE", raising=False)
    assert signing.key_path() == Path("~/.config/tune-hand/key").expanduser()
    assert signing.key_path("/k") == Path("/k")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_can_read_or_write_is_refused(key, mode):
    key.chmod(mode)
    with pytest.raises(TuneHandError, match=r"chmod 600") as err:
        load_key(key)
    assert "\n" not in str(err.value)


def test_a_key_owned_by_someone_else_is_refused(key, monkeypatch):
    """Neither yours nor root's (root may own a mounted secret: as sshd, it is trusted anyway)."""
    if os.getuid() == 0:
        os.chown(key, 12345, -1)
    else:
        monkeypatch.setattr(os, "getuid", lambda: key.stat().st_uid + 1)
    with pytest.raises(TuneHandError, match="owned by uid"):
        load_key(key)


def test_a_missing_key_says_how_to_bring_it_over(tmp_path):
    with pytest.raises(TuneHandError, match=r"no tune-hand key at .*copy that ~/.config/tune-hand/key here \(mode "
                                            r"0600\) or point \$TUNE_HAND_KEY_FILE"):
        load_key(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_a_file_that_is_not_a_key_is_refused(tmp_path):
    path = tmp_path / "key"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(TuneHandError, match="not a tune-hand key"):
        load_key(path)


def test_the_mac_binds_path_key_and_bytes(tmp_path, key):
    k = load_key(key)
    other = load_key(tmp_path / "other", create=True)
    f = tmp_path / "f"
    f.write_bytes(b"state")
    base = k.mac("a/params.pkl", f)
    assert base == k.mac("a/params.pkl", f)
    assert base != k.mac("b/params.pkl", f) and base != other.mac("a/params.pkl", f)
    f.write_bytes(b"statf")
    assert base != k.mac("a/params.pkl", f)


def test_which_files_ray_may_unpickle():
    yes = ["tuner.pkl", "searcher-state-x.pkl", "callback-states-x.pkl", "t/params.pkl", "t/error.pkl",
           "experiment_state-2024.json", "search_gen_state-x.json", "basic-variant-state-x.json", "t/c/evil.pkl"]
    no = ["tune_hand_sweep.json", "t/result.json", "t/params.json", "t/checkpoint_000001/checkpoint.pt",
          "t/events.out.tfevents.1", "experiment_state.txt"]
    assert all(map(signing.unpicklable, yes)) and not any(map(signing.unpicklable, no))


# -- trust and verify --------------------------------------------------------------------------
def test_trust_signs_what_ray_would_unpickle_and_prints_it(fake_exp, key, capsys):
    signed = trust_experiment(str(fake_exp), key)
    assert signed == ["experiment_state-2024-01-01_00-00-00.json", "searcher-state-2024-01-01_00-00-00.pkl",
                      "train_a/params.pkl", "tuner.pkl"]
    err = capsys.readouterr().err
    assert all(f"signing {rel}" in err for rel in signed)
    manifest = json.loads((fake_exp / MANIFEST).read_text())
    assert set(manifest["files"]) == set(signed) and manifest["key_id"] == load_key(key).id
    assert load_key(key).secret.hex() not in (fake_exp / MANIFEST).read_text()
    verify_experiment(str(fake_exp), key)


@pytest.mark.parametrize("change", ["tamper", "extra", "moved"])
def test_a_changed_or_unknown_pickle_is_refused_naming_it(fake_exp, key, change):
    trust_experiment(str(fake_exp), key)
    if change == "tamper":
        rel = "searcher-state-2024-01-01_00-00-00.pkl"
        (fake_exp / rel).write_bytes(b"evil")
        why = "does not match its signature"
    elif change == "extra":
        rel = "train_a/checkpoint_000000/x.pkl"
        (fake_exp / rel).parent.mkdir()
        (fake_exp / rel).write_bytes(b"evil")
        why = "not signed"
    else:  # a signed file copied to a name Ray loads: the path is inside the MAC
        rel = "searcher-state-2099-01-01_00-00-00.pkl"
        shutil.copy(fake_exp / "searcher-state-2024-01-01_00-00-00.pkl", fake_exp / rel)
        why = "not signed"
    with pytest.raises(TuneHandError) as err:
        verify_experiment(str(fake_exp), key)
    text = str(err.value)
    assert text.startswith(str(fake_exp / rel)) and why in text and "nothing was unpickled" in text
    assert "\n" not in text


def test_an_unsigned_sweep_is_refused_with_the_trust_command(fake_exp, key):
    with pytest.raises(TuneHandError, match=rf"unsigned .*`tune-hand trust {fake_exp}`"):
        verify_experiment(str(fake_exp), key)


def test_a_sweep_signed_with_another_key_is_refused(fake_exp, key, tmp_path):
    trust_experiment(str(fake_exp), key)
    with pytest.raises(TuneHandError, match="no tune-hand key at"):
        verify_experiment(str(fake_exp), tmp_path / "other")  # a resume never makes a key
    load_key(tmp_path / "other", create=True)
    with pytest.raises(TuneHandError, match="signed with another key"):
        verify_experiment(str(fake_exp), tmp_path / "other")


def test_a_directory_without_ray_state_is_not_a_sweep_to_resume(tmp_path, key):
    (tmp_path / "e").mkdir()
    with pytest.raises(TuneHandError, match="no experiment state"):
        verify_experiment(str(tmp_path / "e"), key)


def test_the_last_snapshots_of_a_file_verify_and_older_ones_do_not(fake_exp, key):
    """A kill during Ray's upload leaves files of the last two snapshots: both must verify."""
    rel = "experiment_state-2024-01-01_00-00-00.json"
    versions = [f'{{"v": {i}}}'.encode() for i in range(HISTORY + 1)]
    for data in versions:
        (fake_exp / rel).write_bytes(data)
        trust_experiment(str(fake_exp), key)  # adds this version to the history
    for data in versions[1:]:
        (fake_exp / rel).write_bytes(data)
        verify_experiment(str(fake_exp), key)
    (fake_exp / rel).write_bytes(versions[0])
    with pytest.raises(TuneHandError, match="does not match"):
        verify_experiment(str(fake_exp), key)


def test_a_snapshot_signs_its_own_session_and_no_stranger(tmp_path, key, capsys):
    """In Ray's staging directory: this session's files and trial directories are signed; a
    top-level file of another session is signed only if it already was."""
    exp, staging = tmp_path / "exp", tmp_path / "staging"
    exp.mkdir()
    (staging / "train_a").mkdir(parents=True)
    (staging / "experiment_state-S2.json").write_text("{}")
    (staging / "callback-states-S2.pkl").write_bytes(b"cb")
    (staging / "train_a" / "params.pkl").write_bytes(b"p")
    (staging / "searcher-state-S1.pkl").write_bytes(b"slipped in after the check")
    signer = Signer(str(exp), load_key(key))
    signer.sign_snapshot(staging, "S2")
    assert set(signer.files) == {"experiment_state-S2.json", "callback-states-S2.pkl", "train_a/params.pkl"}
    assert "searcher-state-S1.pkl" in capsys.readouterr().err
    assert (exp / MANIFEST).read_text() == (staging / MANIFEST).read_text() == signer.text()


# -- a real sweep ------------------------------------------------------------------------------
SAMPLES = 3
EPOCHS = 3


@pytest.fixture(scope="module")
def killed(tiny_data, tmp_path_factory):
    """A sweep whose driver was SIGKILLed at a random moment once a snapshot named a trial
    (uploaded with its params.pkl). Returns (experiment, key file, what the kill was)."""
    root = tmp_path_factory.mktemp("signed")
    key = root / "key"
    exp = root / "st" / "s"
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 6.0)
    args = [sys.executable, "-m", "tune_hand", "search", "quick", "--data", str(tiny_data), "--storage",
            str(root / "st"), "--name", "s", "--samples", str(SAMPLES), "--key-file", str(key)]
    for item in TINY + [f"optim.epochs={EPOCHS}"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, env=dict(os.environ, RAY_AUTH_MODE="disabled"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and not list(exp.glob("train_*/params.pkl")):
            time.sleep(0.1)
        if not list(exp.glob("train_*/params.pkl")):
            pytest.fail(f"no trial appeared:\n{proc.communicate()[0][-3000:] if proc.poll() is not None else ''}")
        time.sleep(delay)
    finally:
        kill_driver_session(proc)
    return exp, key, f"seed {seed} (killed {delay:.1f}s after the first trial's snapshot)"


@pytest.fixture
def copy(killed, tmp_path) -> Path:
    """A copy of the killed sweep to tamper with (the refusals run before Ray reads a path)."""
    exp = tmp_path / "copy"
    shutil.copytree(killed[0], exp)
    return exp



@pytest.mark.slow
def test_a_killed_sweep_verifies(killed):
    exp, key, seed = killed
    signer = verify_experiment(str(exp), key)
    assert "tuner.pkl" in signer.files, seed
    assert any(rel.startswith("experiment_state-") for rel in signer.files), seed


def _refused(argv: list[str], capsys, exp: Path, names: str, marker: Path | None = None) -> None:
    from tune_hand.cli import main

    before = _files(exp)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names in err[0] and not err[0].endswith("..."), err  # whole, on one line
    assert _files(exp) == before  # nothing written: Ray never started
    if marker is not None:
        assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tuner.pkl", "searcher-state-*.pkl", "callback-states-*.pkl",
                                    "experiment_state-*.json", "train_*/params.pkl", "train_*/extra.pkl"])
def test_a_planted_pickle_is_refused_and_never_loaded(killed, copy, tmp_path, capsys, target):
    _, key, seed = killed
    marker = tmp_path / "MARKER"
    evil = _evil_pickle(marker)
    if target == "train_*/extra.pkl":
        path = sorted(copy.glob("train_*"))[0] / "extra.pkl"
        path.write_bytes(evil)
    else:
        path = sorted(copy.glob(target))[-1]
        if target.endswith(".json"):  # Ray's TuneFunctionDecoder would cloudpickle.loads this value
            state = json.loads(path.read_text())
            state["runner_data"]["_evil"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": evil.hex()}
            path.write_text(json.dumps(state))
        else:
            path.write_bytes(evil)
    rel = str(path.relative_to(copy))
    _refused(["resume", str(copy), "--key-file", str(key)], capsys, copy, rel, marker)
    assert not marker.exists(), seed


@pytest.mark.slow
def test_a_wrong_missing_or_loose_key_is_refused(killed, copy, tmp_path, capsys, monkeypatch):
    _, key, _ = killed
    other = tmp_path / "other-key"
    load_key(other, create=True)
    capsys.readouterr()
    monkeypatch.setenv("TUNE_HAND_KEY_FILE", str(other))
    _refused(["resume", str(copy)], capsys, copy, "signed with another key")
    _refused(["resume", str(copy), "--key-file", str(tmp_path / "none")], capsys, copy, "no tune-hand key at")
    loose = tmp_path / "loose-key"
    shutil.copy(key, loose)
    loose.chmod(0o644)
    _refused(["resume", str(copy), "--key-file", str(loose)], capsys, copy, f"chmod 600 {loose}")


@pytest.mark.slow
def test_the_killed_sweep_resumes_to_the_end_and_still_verifies(killed, capsys):
    # Last in this file: it runs the sweep on, so the copies above saw it as the kill left it.
    from tune_hand.cli import main
    from tune_hand.sweep import load_status

    exp, key, seed = killed
    assert main(["resume", str(exp), "--key-file", str(key)]) == 0, (seed, capsys.readouterr().err[-3000:])
    status = load_status(exp)
    assert len(status["trials"]) == SAMPLES, seed
    assert {t["state"] for t in status["trials"]} <= {"finished", "stopped early"}, seed
    signer = verify_experiment(str(exp), key)
    states = [rel for rel in signer.files if rel.startswith("experiment_state-")]
    assert len(states) >= 2, (seed, states)  # the killed session's snapshot and the resumed one's
