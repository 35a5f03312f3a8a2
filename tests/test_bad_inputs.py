"""Malicious and broken inputs, through the CLI as a user runs it: each is refused with one line on stderr that
names the value or the file, exit status 2, no traceback, before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--config", "small", "--set", "model.channels=8", "--set", "model.blocks=2", "--set", "optim.epochs=1",
              "--set", "optim.batch_size=4", "--set", "train.threads=1", "--set", "train.image_every=0"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tune_hand", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def assert_one_line(proc: subprocess.CompletedProcess, *names: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in err and len(err.splitlines()) <= 3, err
    line = next(ln for ln in err.splitlines() if ln.startswith("tune-hand: error:"))
    for name in names:
        assert name in line, (name, line)
    return line


# -- config values: refused before the dataset is even read -----------------------------------------------------

CONFIG_CASES = [
    ("optim.lr=inf", "inf"),
    ("optim.lr=nan", "nan"),
    ("optim.lr=1e300", "1e+300"),
    ("optim.lr=-0.001", "-0.001"),
    ("optim.weight_decay=inf", "inf"),
    ("optim.weight_decay=.nan", "nan"),
    ("optim.batch_size=0", "0"),
    ("optim.batch_size=-8", "-8"),
    ("optim.batch_size=99999999999999999999999", "99999999999999999999999"),
    ("eval.batch_size=0", "0"),
    ("optim.epochs=1e300", "1e300"),
    ("train.seed=-1", "-1"),
    ("train.seed=4294967296", "4294967296"),  # numpy's seeds are 0..2**32-1
    ("data.seed=-5", "-5"),
    ("data.image_size=100", "100"),
    ("data.image_size=0", "0"),
    ("data.image_size=-64", "-64"),
    ("data.range_margin=1e300", "1e+300"),
    ("data.range_margin=-0.5", "-0.5"),
    ("data.val_fraction=1.0", "1.0"),
    ("augment.flip=nan", "nan"),
    ("augment.rotation_prob=2", "2"),
    ("model.width_coefficient=1e300", "1e+300"),
    ("optim.milestones=[10, 99999999999999]", "99999999999999"),
]


@pytest.mark.parametrize("override,shown", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value_is_one_line_naming_it(tmp_path, override, shown):
    key = override.partition("=")[0]
    proc = run_cli("train", "--data", str(tmp_path / "no-data-needed"), "--out", str(tmp_path / "run"),
                   "--config", "small", "--set", override)
    assert_one_line(proc, key, shown)
    assert not (tmp_path / "run").exists()


def test_bad_value_in_a_config_file_is_one_line_naming_it(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("optim:\n  lr: .inf\n")
    proc = run_cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(config))
    assert_one_line(proc, "optim.lr", "inf")


# -- images: a corrupt, empty, truncated or tiny file is named in one line -----------------------------------------

def _break(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "not-jpeg":
        path.write_bytes(os.urandom(len(data)))
    elif how == "garbled":  # a JPEG's start and end markers around noise
        path.write_bytes(b"\xff\xd8" + os.urandom(len(data) - 4).replace(b"\xff", b"\x00") + b"\xff\xd9")
    elif how == "zero-byte":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "tiny":
        cv2.imwrite(str(path), np.full((4, 4, 3), 90, np.uint8))
    else:
        raise ValueError(how)


IMAGE_CASES = {"not-jpeg": "not a JPEG", "garbled": "corrupt JPEG", "zero-byte": "empty", "truncated": "truncated", "tiny": "too small"}


@pytest.fixture
def broken_data(make_freihand, tmp_path):
    def make(how: str) -> tuple[Path, Path]:
        root = make_freihand(tmp_path / "fh", n_unique=5, versions=2, n_eval=2, image_size=64)
        bad = root / "training" / "rgb" / "00000007.jpg"
        _break(bad, how)
        return root, bad
    return make


@pytest.mark.parametrize("how", IMAGE_CASES)
def test_inspect_names_a_bad_training_image(broken_data, how):
    root, bad = broken_data(how)
    assert_one_line(run_cli("inspect", str(root)), str(bad), IMAGE_CASES[how])


def test_inspect_lists_a_bad_evaluation_image_as_a_problem(broken_data):
    root, _ = broken_data("tiny")
    (root / "training" / "rgb" / "00000007.jpg").write_bytes((root / "training" / "rgb" / "00000006.jpg").read_bytes())
    _break(root / "evaluation" / "rgb" / "00000001.jpg", "truncated")
    proc = run_cli("inspect", str(root))
    assert proc.returncode == 0, proc.stderr
    assert "evaluation split unusable" in proc.stdout and "00000001.jpg: unreadable (truncated JPEG" in proc.stdout


@pytest.mark.slow
# Every kind goes through the same read_image (each is checked through `inspect` above); here, that
# the one line survives a DataLoader worker, and the in-process loader.
@pytest.mark.parametrize("how,workers", [("garbled", 2), ("zero-byte", 2), ("truncated", 0)])
def test_train_names_a_bad_image_also_from_a_dataloader_worker(broken_data, tmp_path, how, workers):
    root, bad = broken_data(how)
    proc = run_cli("train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY_TRAIN,
                   "--set", f"data.num_workers={workers}")
    line = assert_one_line(proc, str(bad), IMAGE_CASES[how])
    assert "DataLoader worker" not in line


# -- labels: absurd, non-finite or pathological annotation files -------------------------------------------------

LABEL_CASES = {
    "metres-as-1e300": (lambda xyz: [[[0.0, 0.0, 1e300]] * 21] + xyz[1:], "over 1000 m"),
    "nan": (lambda xyz: [[[float("nan")] * 3] * 21] + xyz[1:], "non-finite"),
    "km-not-metres": (lambda xyz: [[[c * 1e4 for c in j] for j in e] for e in xyz], "in metres"),
}


@pytest.mark.parametrize("how", LABEL_CASES)
def test_absurd_labels_are_one_line_naming_the_file(make_freihand, tmp_path, how):
    import json

    root = make_freihand(tmp_path / "fh", n_unique=5, versions=2, n_eval=2, image_size=64)
    path = root / "training_xyz.json"
    xyz = json.loads(path.read_text())
    change, shown = LABEL_CASES[how]
    path.write_text(json.dumps(change(xyz)))
    assert_one_line(run_cli("inspect", str(root)), "training_xyz.json", shown)


def test_deeply_nested_annotations_are_one_line(make_freihand, tmp_path):
    root = make_freihand(tmp_path / "fh", n_unique=5, versions=2, n_eval=2, image_size=64)
    (root / "training_K.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_one_line(run_cli("inspect", str(root)), "training_K.json")
