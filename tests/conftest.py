"""Shared fixtures: a tiny FreiHAND tree written by hand, in the official layout.

    def test_something(make_freihand, tmp_path):
        root = make_freihand(tmp_path / "fh", n_unique=7, versions=2)

The tree holds random but plausible cameras (principal point near the centre, fx != fy), right-hand-like
skeletons 0.55-0.85 m in front of the camera, and JPEGs with one coloured dot per projected joint, tinted
per colour version. N is deliberately not 32,560, so nothing can rely on the release's count.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

# Finger base directions (radians in the image plane) and bone lengths (m) of a rough right hand.
_FINGER_ANGLES = np.deg2rad([-150.0, -110.0, -90.0, -70.0, -50.0])
_BONES = np.array([0.036, 0.028, 0.022, 0.018])


def _skeleton(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 21, 3) joints in metres: wrist, then 5 fingers of 4 joints, base to tip."""
    wrist = np.stack([rng.uniform(-0.03, 0.03, n), rng.uniform(-0.03, 0.03, n), rng.uniform(0.55, 0.85, n)], -1)
    spin = rng.uniform(-np.pi, np.pi, (n, 1))
    angles = _FINGER_ANGLES[None, :] + spin + rng.uniform(-0.15, 0.15, (n, 5))  # (n, 5)
    direction = np.stack([np.cos(angles), np.sin(angles), rng.uniform(-0.4, 0.4, (n, 5))], -1)  # (n, 5, 3)
    steps = direction[:, :, None, :] * _BONES[None, None, :, None]  # (n, 5, 4, 3)
    fingers = wrist[:, None, None, :] + np.cumsum(steps, axis=2)
    return np.concatenate([wrist[:, None, :], fingers.reshape(n, 20, 3)], axis=1)


def _cameras(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    f = size * rng.uniform(1.3, 1.7, n)
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = f
    K[:, 1, 1] = f * rng.uniform(0.97, 1.03, n)
    K[:, 0, 2] = (size - 1) / 2 + rng.uniform(-4, 4, n) * size / 224
    K[:, 1, 2] = (size - 1) / 2 + rng.uniform(-4, 4, n) * size / 224
    K[:, 2, 2] = 1.0
    return K


def _draw(K: np.ndarray, xyz: np.ndarray, size: int, version: int) -> np.ndarray:
    """An RGB image: a dark background and one dot per joint, coloured by finger and tinted by version."""
    image = np.full((size, size, 3), 20 + 10 * version, dtype=np.uint8)
    p = K @ xyz.T
    uv = (p[:2] / p[2]).T
    radius = max(2, size // 56)
    for j, (u, v) in enumerate(uv):  # 21 dots per test image; fine outside any hot path
        colour = [(60 * (j // 4 + version)) % 256, 255 - 10 * j, (90 * version + 40) % 256]
        cv2.circle(image, (int(round(u)), int(round(v))), radius, colour, -1, lineType=cv2.LINE_AA)
    return image


def _write_split(root: Path, split: str, K: np.ndarray, xyz: np.ndarray, versions: int, size: int,
                 with_xyz: bool) -> None:
    n = len(K)
    (root / f"{split}_K.json").write_text(json.dumps(K.tolist()))
    (root / f"{split}_scale.json").write_text(json.dumps(np.linalg.norm(xyz[:, 10] - xyz[:, 9], axis=-1).tolist()))
    if with_xyz:
        (root / f"{split}_xyz.json").write_text(json.dumps(xyz.tolist()))
    rgb = root / split / "rgb"
    rgb.mkdir(parents=True)
    for v in range(versions):
        for k in range(n):
            image = _draw(K[k], xyz[k], size, v)
            cv2.imwrite(str(rgb / f"{v * n + k:08d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def make_freihand(root, n_unique: int = 5, versions: int = 4, n_eval: int = 3, image_size: int = 224,
                  with_eval_xyz: bool = True, seed: int = 0) -> Path:
    """Write a FreiHAND-format tree under `root` and return it; n_eval=0 leaves out the evaluation split."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _write_split(root, "training", _cameras(rng, n_unique, image_size), _skeleton(rng, n_unique), versions,
                 image_size, with_xyz=True)
    if n_eval:
        _write_split(root, "evaluation", _cameras(rng, n_eval, image_size), _skeleton(rng, n_eval), 1,
                     image_size, with_xyz=with_eval_xyz)
    return root


@pytest.fixture(name="make_freihand")
def make_freihand_fixture():
    """The `make_freihand(root, ...)` builder, for tests that need their own variant of the tree."""
    return make_freihand


@pytest.fixture
def freihand_root(tmp_path) -> Path:
    """A default tree: 5 annotations x 4 versions, 3 evaluation images with ground truth, 224 px."""
    return make_freihand(tmp_path / "freihand")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small dataset from the synthetic renderer (16 poses x 4 versions, 8 evaluation images), shared by
    the training and evaluation tests; rendered once per test session."""
    from tune_hand.data.synthetic import render_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    render_dataset(root, n_train=16, n_eval=8, seed=1, with_mesh_files=False)
    return root


# A sweep's trial config small enough for seconds-long epochs on 2 cores.
TINY = ["model.channels=8", "model.blocks=2", "optim.batch_size=8", "data.num_workers=0", "data.val_fraction=0.25",
        "train.threads=1"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """12 synthetic poses x 4 versions (4 evaluation images) for sweeps."""
    from tune_hand.data.synthetic import render_dataset

    root = tmp_path_factory.mktemp("sweepdata") / "data"
    render_dataset(root, n_train=12, n_eval=4, seed=1, with_mesh_files=False)
    return root


def raylet_processes(session: int | None = None) -> list[int]:
    """PIDs of raylet processes (a Ray node still up) in process session `session` (default: this
    test run's). A local ray.init() starts its raylet as a child in the driver's session, so Ray
    nodes of other programs on the machine are not counted."""
    sid = os.getsid(0) if session is None else session
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"raylet" in cmd.split(b"\0")[0] and os.getsid(int(pid)) == sid:
                pids.append(int(pid))
        except OSError:  # gone meanwhile
            continue
    return pids


@pytest.fixture(scope="session")
def sweep(tiny_data, tmp_path_factory):
    """Run `tune-hand search quick` once per session (sweep, report tests); returns (experiment dir, seconds)."""
    if raylet_processes():
        pytest.skip("a Ray node from an earlier test of this run is still up")
    storage = tmp_path_factory.mktemp("sweeps")
    args = ["search", "quick", "--data", str(tiny_data), "--storage", str(storage), "--name", "q"]
    for item in TINY:
        args += ["--set", item]
    start = time.perf_counter()
    from tune_hand.cli import main

    code = main(args)
    seconds = time.perf_counter() - start
    assert code == 0
    return storage / "q", seconds


@pytest.fixture(autouse=True, scope="session")
def _quiet_ray_auth(tmp_path_factory):
    """Ray 2.60 turns token auth on for a local ray.init() unless told otherwise (DESIGN section 7).
    Sweeps sign their state with a key of this test session's (never the user's ~/.config/tune-hand/key)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_HAND_KEY_FILE", str(tmp_path_factory.mktemp("key") / "key"))
    yield


def kill_driver_session(proc) -> None:
    """SIGKILL a sweep driver's process group (it and every Ray process it started) and wait
    until no raylet of its session is left."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while raylet_processes(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert raylet_processes(proc.pid) == []  # the killed session left no Ray node behind
