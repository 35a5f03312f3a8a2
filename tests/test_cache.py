"""The decoded-image cache: same pixels as decoding, built once per node under a lock, rebuilt when stale or
damaged, and off (with a warning) when it does not fit."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tune_hand.config import AugmentConfig
from tune_hand.data.cache import HEADER_BYTES, CacheUnfit, DecodedCache, cache_dir, open_cache
from tune_hand.data.dataset import HandPoseDataset
from tune_hand.data.freihand import FreiHAND
from tune_hand.errors import DataError

REPO = Path(__file__).resolve().parents[1]
AUGMENT = AugmentConfig(rotation_deg=180.0, flip=0.5, color_jitter=0.3, scale=0.3, translate=0.1)


@pytest.fixture
def reader(make_freihand, tmp_path) -> FreiHAND:
    return FreiHAND(make_freihand(tmp_path / "fh", n_unique=5, versions=2, n_eval=0, image_size=64))


def _open(reader, directory, **kwargs):
    lines: list[str] = []
    cache = open_cache(reader, str(directory), log=lines.append, **kwargs)
    return cache, lines


def _cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.u8"))


def test_cache_holds_exactly_the_decoded_images(reader, tmp_path):
    cache, lines = _open(reader, tmp_path / "cache")
    assert len(lines) == 1 and "building" in lines[0]
    assert cache.shape == (len(reader), 64, 64, 3) and len(cache) == len(reader)
    for i in range(len(reader)):
        np.testing.assert_array_equal(cache[i], reader.read_image(i))
    again, lines = _open(reader, tmp_path / "cache")
    assert lines == [] and again.path == cache.path  # found, not rebuilt


@pytest.mark.parametrize("device_warp", [False, True])
def test_items_from_the_cache_equal_items_from_jpegs(reader, tmp_path, device_warp):
    cache, _ = _open(reader, tmp_path / "cache")
    plain = HandPoseDataset(reader, np.arange(len(reader)), 48, AUGMENT, device_warp=device_warp)
    cached = HandPoseDataset(reader, np.arange(len(reader)), 48, AUGMENT, cache=cache, device_warp=device_warp)
    for key in (3, (3, 11), (7, 12), 9):
        a, b = plain[key], cached[key]
        assert a.keys() == b.keys()
        for name, value in a.items():
            assert torch.equal(value, b[name]) if isinstance(value, torch.Tensor) else value == b[name], name


def test_off_means_no_cache_and_no_files(reader, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_cache(reader, "") is None
    assert list(tmp_path.iterdir()) == [tmp_path / "fh"]


def test_auto_is_the_env_dir_or_the_temp_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNE_HAND_CACHE_DIR", str(tmp_path / "here"))
    assert cache_dir("auto") == tmp_path / "here"
    monkeypatch.delenv("TUNE_HAND_CACHE_DIR")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read $TMPDIR
    assert cache_dir("auto") == tmp_path / "tmp" / f"tune-hand-cache-{os.getuid()}"
    assert cache_dir("") is None and cache_dir("/x/y") == Path("/x/y")


_BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tune_hand.data.cache import open_cache
    from tune_hand.data.freihand import FreiHAND

    root, directory, me, peer = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]

    class SlowReader(FreiHAND):
        calls = 0

        def read_image(self, i):
            SlowReader.calls += 1
            if SlowReader.calls == 2:  # the build's first image (the first read, image 0's size, precedes the lock)
                Path(f"{me}_building").touch()
                if peer:  # hold the lock until the other process is about to open the cache too
                    while not Path(f"{peer}_ready").exists():
                        time.sleep(0.02)
                    time.sleep(1.0)
            return super().read_image(i)

    Path(f"{me}_ready").touch()
    cache = open_cache(SlowReader(root), directory, log=lambda m: print(m.split()[0], flush=True))
    print("sum", int(sum(int(cache[i].sum()) for i in range(len(cache)))), flush=True)
""")


def test_two_processes_build_once(reader, tmp_path):
    """Two processes open the same missing cache at once: one builds it, the other waits on the lock
    and then maps what the first built."""
    script = tmp_path / "builder.py"
    script.write_text(_BUILDER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    directory = tmp_path / "cache"

    def start(me: str, peer: str) -> subprocess.Popen:
        args = [str(reader.root), str(directory), str(tmp_path / me), str(tmp_path / peer) if peer else ""]
        return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    first = start("first", peer="second")
    deadline = time.monotonic() + 120
    while not (tmp_path / "first_building").exists():  # the first holds the lock and is building
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = start("second", peer="")
    out = [p.communicate(timeout=180) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], out
    logs = [stdout.split("\n") for stdout, _ in out]
    assert "building" in logs[0] and "waiting" in logs[1] and "building" not in logs[1], out
    assert not (tmp_path / "second_building").exists()  # the second never decoded past image 0
    sums = [next(line for line in log if line.startswith("sum")) for log in logs]
    assert sums[0] == sums[1] == f"sum {sum(int(reader.read_image(i).sum()) for i in range(len(reader)))}"
    assert len(_cache_files(directory)) == 1
    assert not list(directory.glob(".*.tmp"))  # the builder's temporary file was renamed, nothing left over


def test_changed_dataset_rebuilds(reader, tmp_path):
    cache, _ = _open(reader, tmp_path / "cache")
    path = reader.image_path(4)
    new = np.full((64, 64, 3), 200, np.uint8)
    cv2.imwrite(str(path), new)
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)  # a new mtime even on a coarse clock
    rebuilt, lines = _open(reader, tmp_path / "cache")
    assert len(lines) == 1 and "dataset changed" in lines[0]
    assert rebuilt.path == cache.path and len(_cache_files(tmp_path / "cache")) == 1
    np.testing.assert_array_equal(rebuilt[4], reader.read_image(4))
    assert abs(int(rebuilt[4].astype(int).mean()) - 200) <= 2


def test_other_image_size_is_another_cache(make_freihand, tmp_path):
    small = FreiHAND(make_freihand(tmp_path / "a", n_unique=3, versions=1, n_eval=0, image_size=64))
    large = FreiHAND(make_freihand(tmp_path / "b", n_unique=3, versions=1, n_eval=0, image_size=96))
    a, _ = _open(small, tmp_path / "cache")
    b, _ = _open(large, tmp_path / "cache")
    assert a.path != b.path and a.shape[1:] == (64, 64, 3) and b.shape[1:] == (96, 96, 3)


@pytest.mark.parametrize("damage", ["truncate", "pixels", "header"])
def test_damaged_cache_is_detected_and_rebuilt(reader, tmp_path, damage):
    cache, _ = _open(reader, tmp_path / "cache")
    path = cache.path
    del cache
    if damage == "truncate":
        os.truncate(path, path.stat().st_size - 1000)
    else:
        with open(path, "r+b") as f:
            f.seek(HEADER_BYTES + 64 * 64 * 3 * (len(reader) - 1) + 100 if damage == "pixels" else 0)
            f.write(b"\xff\x00" * 8)
    rebuilt, lines = _open(reader, tmp_path / "cache")
    why = {"truncate": "truncated", "pixels": "checksum", "header": "header"}[damage]
    assert len(lines) == 1 and "building" in lines[0] and why in lines[0], lines
    for i in range(len(reader)):
        np.testing.assert_array_equal(rebuilt[i], reader.read_image(i))


def test_leftover_of_a_crashed_builder_is_removed(reader, tmp_path):
    directory = tmp_path / "cache"
    cache, _ = _open(reader, directory)
    name = cache.path.name
    cache.path.unlink()
    leftover = directory / f".{name}.abc123.tmp"
    leftover.write_bytes(b"half a cache")
    rebuilt, lines = _open(reader, directory)
    assert "building" in lines[0] and not leftover.exists() and rebuilt.path.exists()


def test_too_big_warns_and_falls_back(reader, tmp_path):
    directory = tmp_path / "cache"
    with pytest.warns(CacheUnfit, match=r"needs 127 kB, over the 10 kB allowed; decoding the JPEGs instead"):
        assert open_cache(reader, str(directory), max_bytes=10_000, log=lambda m: None) is None
    assert _cache_files(directory) == [] and not list(directory.glob(".*.tmp"))


def test_full_disk_warns_and_falls_back(reader, tmp_path, monkeypatch):
    class Usage:
        total, used, free = 10**12, 10**12 - 2 * 10**9, 2 * 10**9 + 1000  # 1000 bytes over the 2 GB reserve

    monkeypatch.setattr("tune_hand.data.cache.shutil.disk_usage", lambda _: Usage)
    with pytest.warns(CacheUnfit, match=r"free \(keeping .* spare\); decoding the JPEGs instead"):
        assert open_cache(reader, str(tmp_path / "cache"), reserve_bytes=2 * 10**9, log=lambda m: None) is None
    assert _cache_files(tmp_path / "cache") == []


def test_unusable_directory_warns_and_falls_back(reader, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.warns(CacheUnfit, match="cannot hold a decoded cache there"):
        assert open_cache(reader, str(tmp_path / "a_file" / "cache"), log=lambda m: None) is None


def test_disk_filling_up_during_the_build_falls_back_and_leaves_nothing(reader, tmp_path, monkeypatch):
    from tune_hand.data import cache as cache_module

    real_atomic_write = cache_module.atomic_write

    def filling_up(path, write):
        def limited(f):
            class Full:  # the disk fills up after the header and a few images
                written = 0

                def write(self, data):
                    Full.written += memoryview(data).nbytes
                    if Full.written > HEADER_BYTES + 30_000:
                        raise OSError(28, "No space left on device")
                    return f.write(data)

                def seek(self, *args):
                    return f.seek(*args)

            write(Full())

        return real_atomic_write(path, limited)

    monkeypatch.setattr(cache_module, "atomic_write", filling_up)
    with pytest.warns(CacheUnfit, match="could not write the decoded cache .No space left on device"):
        assert open_cache(reader, str(tmp_path / "cache"), log=lambda m: None) is None
    assert _cache_files(tmp_path / "cache") == [] and not list((tmp_path / "cache").glob(".*.tmp"))


def test_cache_pickles_without_its_images(reader, tmp_path):
    cache, _ = _open(reader, tmp_path / "cache")
    cache[0]  # mapped in this process
    blob = pickle.dumps(cache)
    assert len(blob) < 1000
    np.testing.assert_array_equal(pickle.loads(blob)[5], cache[5])
    assert isinstance(pickle.loads(blob), DecodedCache)


def test_trainer_with_cache_and_device_warp(synth_data, tmp_path):
    """Trainer._build_loaders wires both options: its batches equal the CPU path's (within the device warp's
    grey-level tolerance), labels exactly."""
    from tune_hand.config import load_config
    from tune_hand.training import Trainer

    cfg = load_config("small", ["optim.batch_size=8", "data.num_workers=0", "model.channels=8", "model.blocks=2",
                                f"data.cache={tmp_path / 'cache'}", "data.device_warp=true"])
    trainer = Trainer(cfg, synth_data)
    assert trainer.train_loader.dataset.cache is not None and len(_cache_files(tmp_path / "cache")) == 1
    assert trainer.val_loader.dataset.cache is trainer.train_loader.dataset.cache
    batch = next(iter(trainer.train_loader))
    cpu = HandPoseDataset(trainer.reader, trainer.train_idx, cfg.data.image_size, cfg.augment)
    expected = torch.utils.data.default_collate([cpu[key] for key in list(trainer.sampler)[:8]])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == expected["image"].shape
    assert (batch["image"].int() - expected["image"].int()).abs().max() <= 2
    assert torch.equal(batch["xyz_mm"], expected["xyz_mm"]) and torch.equal(batch["index"], expected["index"])


def test_cache_directory_is_created_private(reader, tmp_path):
    directory = tmp_path / "new" / "cache"
    _open(reader, directory)
    assert directory.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_cache_directory_others_may_write_is_refused(reader, tmp_path, mode):
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(DataError, match=r"writable by others .*chmod 700 .*data.cache") as info:
        open_cache(reader, str(directory), log=lambda m: None)
    assert str(directory) in str(info.value) and "\n" not in str(info.value)
    assert _cache_files(directory) == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_cache_directory_of_another_user_is_refused_and_their_file_rebuilt(reader, tmp_path):
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chown(directory, 12345, 12345)
    with pytest.raises(DataError, match=r"belongs to uid 12345, not to you"):
        open_cache(reader, str(directory), log=lambda m: None)
    os.chown(directory, 0, 0)
    cache, _ = _open(reader, directory)
    os.chown(cache.path, 12345, 12345)  # a file someone else put into our directory
    rebuilt, lines = _open(reader, directory)
    assert "owned by uid 12345" in lines[0] and rebuilt.path.stat().st_uid == 0


def test_corruption_anywhere_is_one_line_when_the_image_is_read(reader, tmp_path):
    cache, _ = _open(reader, tmp_path / "cache")
    np.testing.assert_array_equal(cache[2], reader.read_image(2))  # checked and fine
    with open(cache.path, "r+b") as f:  # image 3, after the cache was opened and checked
        f.seek(HEADER_BYTES + 64 * 64 * 3 * 3 + 5)
        f.write(b"\x01\x02\x03")
    with pytest.raises(DataError, match=r"image 3 does not match its checksum .*delete the file"):
        cache[3]


def test_damaged_image_checksums_are_detected_and_rebuilt(reader, tmp_path):
    cache, _ = _open(reader, tmp_path / "cache")
    with open(cache.path, "r+b") as f:
        f.seek(-2, os.SEEK_END)
        f.write(b"\xff\xff")
    rebuilt, lines = _open(reader, tmp_path / "cache")
    assert "building" in lines[0] and "checksum" in lines[0]
    for i in range(len(reader)):
        np.testing.assert_array_equal(rebuilt[i], reader.read_image(i))
