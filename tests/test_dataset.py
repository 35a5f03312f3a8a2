"""HandPoseDataset items, AugmentSampler determinism (same batches with 0 or 2 DataLoader workers), and the
device-side warp against the CPU path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from tune_hand.config import AugmentConfig
from tune_hand.data.dataset import AugmentSampler, DeviceWarpLoader, HandPoseDataset, finish_on_device
from tune_hand.data.freihand import FreiHAND, split_by_sample
from tune_hand.errors import DataError
from tune_hand.geometry import project, resize_affine

AUGMENT = AugmentConfig(rotation_deg=180.0, flip=0.5, color_jitter=0.3, scale=0.2, translate=0.1)


@pytest.fixture
def reader(make_freihand, tmp_path) -> FreiHAND:
    return FreiHAND(make_freihand(tmp_path / "fh", n_unique=5, versions=2, n_eval=3, image_size=64))


def test_item_types_and_shapes(reader):
    data = HandPoseDataset(reader, np.arange(len(reader)), image_size=32, augment=AUGMENT)
    for key in (3, (3, 12345)):
        item = data[key]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
        assert item["image"].is_contiguous()
        assert item["K"].dtype == torch.float32 and item["K"].shape == (3, 3)
        assert item["xyz_mm"].dtype == torch.float32 and item["xyz_mm"].shape == (21, 3)
        assert item["index"] == 3 and item["has_xyz"] is True


def test_plain_key_is_resize_only(reader):
    data = HandPoseDataset(reader, np.array([7, 2]), image_size=32, augment=AUGMENT)
    item = data[0]
    assert item["index"] == 7
    np.testing.assert_allclose(item["xyz_mm"].numpy(), reader.xyz[2] * 1000, rtol=1e-6)
    np.testing.assert_allclose(item["K"].numpy(), resize_affine(64, 32) @ reader.K[2], rtol=1e-6)


def test_augmented_labels_project_with_the_returned_camera(reader):
    data = HandPoseDataset(reader, np.arange(len(reader)), image_size=48, augment=AUGMENT)
    plain, augmented = data[4], data[(4, 99)]
    assert not torch.equal(plain["xyz_mm"], augmented["xyz_mm"])
    np.testing.assert_allclose(augmented["xyz_mm"][:, 2], plain["xyz_mm"][:, 2], rtol=1e-6)  # depth is kept
    uv = project(augmented["K"].double().numpy(), augmented["xyz_mm"].double().numpy())
    assert np.isfinite(uv).all()


def test_same_seed_same_item_other_seed_other_item(reader):
    data = HandPoseDataset(reader, np.arange(len(reader)), image_size=32, augment=AUGMENT)
    a, b, c = data[(5, 1)], data[(5, 1)], data[(5, 2)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["xyz_mm"], b["xyz_mm"])
    assert not torch.equal(a["xyz_mm"], c["xyz_mm"])


def test_no_augment_config_ignores_the_seed(reader):
    data = HandPoseDataset(reader, np.arange(len(reader)), image_size=32, augment=None)
    assert torch.equal(data[(5, 1)]["image"], data[5]["image"])


def test_evaluation_without_ground_truth(make_freihand, tmp_path):
    root = make_freihand(tmp_path / "fh", n_unique=2, versions=1, n_eval=3, image_size=64, with_eval_xyz=False)
    data = HandPoseDataset(FreiHAND(root, "evaluation"), np.arange(3), image_size=32)
    batch = next(iter(DataLoader(data, batch_size=3)))
    assert batch["has_xyz"].dtype == torch.bool and not batch["has_xyz"].any()
    assert torch.count_nonzero(batch["xyz_mm"]) == 0
    assert batch["index"].tolist() == [0, 1, 2]


def test_indices_are_checked(reader):
    with pytest.raises(ValueError, match="indices"):
        HandPoseDataset(reader, np.array([0, len(reader)]), image_size=32)


# -- sampler ----------------------------------------------------------------------------


def test_sampler_visits_every_position_once_per_epoch():
    sampler = AugmentSampler(50, seed=0)
    keys = list(sampler)
    assert len(sampler) == 50 and sorted(p for p, _ in keys) == list(range(50))
    assert len({s for _, s in keys}) == 50


def test_sampler_is_deterministic_per_seed_and_epoch():
    def epoch_keys(seed, epoch, shuffle=True):
        sampler = AugmentSampler(30, seed=seed, shuffle=shuffle)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_keys(1, 3) == epoch_keys(1, 3)
    assert epoch_keys(1, 3) != epoch_keys(1, 4)
    assert epoch_keys(1, 3) != epoch_keys(2, 3)
    in_order = epoch_keys(1, 3, shuffle=False)
    assert [p for p, _ in in_order] == list(range(30))
    assert [s for _, s in in_order] != [s for _, s in epoch_keys(1, 4, shuffle=False)]  # seeds still change


def _epochs(data, num_workers, epochs=2, persistent=False):
    sampler = AugmentSampler(len(data), seed=7)
    loader = DataLoader(data, batch_size=4, sampler=sampler, num_workers=num_workers,
                        persistent_workers=persistent)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def test_batches_do_not_depend_on_worker_count(reader):
    train, _ = split_by_sample(len(reader), reader.num_unique, 0.2, seed=0)
    data = HandPoseDataset(reader, train, image_size=32, augment=AUGMENT)
    serial = _epochs(data, num_workers=0)
    parallel = _epochs(data, num_workers=2, persistent=True)
    for epoch_a, epoch_b in zip(serial, parallel):
        assert len(epoch_a) == len(epoch_b) == 2
        for a, b in zip(epoch_a, epoch_b):
            for key in ("image", "K", "xyz_mm", "index", "has_xyz"):
                assert torch.equal(a[key], b[key]), key
    first, second = serial
    assert not torch.equal(torch.cat([b["index"] for b in first]), torch.cat([b["index"] for b in second]))
    assert not torch.equal(first[0]["xyz_mm"], second[0]["xyz_mm"])


# -- device warp ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size,augment", [
    (64, AugmentConfig()),  # the paper's rotation, no resize
    (48, AUGMENT),  # every op, shrinking 64 -> 48
    (24, AugmentConfig(flip=0.5, scale=0.2)),  # shrinks 2.7x: the anti-aliasing blur runs
])
def test_device_warp_batch_equals_the_cpu_batch(reader, size, augment):
    """warp_batch reproduces OpenCV's jitter, blur and warp within OpenCV's fixed-point rounding; the
    labels are the CPU path's, exactly."""
    cpu = HandPoseDataset(reader, np.arange(len(reader)), size, augment)
    dev = HandPoseDataset(reader, np.arange(len(reader)), size, augment, device_warp=True)
    keys = [(i, 100 + i) for i in range(len(reader))] + [0, 3]
    expected = default_collate([cpu[k] for k in keys])
    raw = default_collate([dev[k] for k in keys])
    assert raw["source"].shape == (len(keys), 64, 64, 3) and "image" not in raw
    got = finish_on_device(raw, torch.device("cpu"), size)
    assert got.keys() == expected.keys()
    diff = (got["image"].int() - expected["image"].int()).abs()
    assert got["image"].dtype == torch.uint8 and diff.max() <= 3 and diff.float().mean() < 0.1
    for key in ("K", "xyz_mm", "index", "has_xyz"):
        assert torch.equal(got[key], expected[key]), key


def test_device_warp_loader_yields_finished_batches(reader):
    data = HandPoseDataset(reader, np.arange(len(reader)), 32, AUGMENT, device_warp=True)
    sampler = AugmentSampler(len(data), seed=3)
    loader = DeviceWarpLoader(DataLoader(data, batch_size=4, sampler=sampler), "cpu", 32)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and loader.dataset is data
    assert all(b["image"].shape[1:] == (3, 32, 32) and b["image"].dtype == torch.uint8 for b in batches)
    assert not {"source", "warp", "blur", "jitter"} & batches[0].keys()


def test_non_square_image_is_named(make_freihand, tmp_path):
    root = make_freihand(tmp_path / "fh", n_unique=2, versions=1, n_eval=0, image_size=64)
    cv2.imwrite(str(root / "training/rgb/00000001.jpg"), np.zeros((60, 64, 3), np.uint8))
    data = HandPoseDataset(FreiHAND(root), np.arange(2), image_size=32)
    with pytest.raises(DataError, match=r"00000001\.jpg: .*square image, got 64x60"):
        data[1]
