"""Target frames: camera, root_relative (minus the wrist), centroid_relative (minus the 21-joint centroid).

The centroid target's round trip back to the camera frame, under the training augmentation and in
rotation averaging's frame; and that root_relative runs, which older checkpoints and sweeps hold,
still train, evaluate, resume and retrain as before.
"""

import json

import numpy as np
import pytest
import torch

from tune_hand.checkpoint import load_checkpoint
from tune_hand.config import AugmentConfig, load_config
from tune_hand.data.augment import apply, sample_params
from tune_hand.data.freihand import FreiHAND, coordinate_ranges, mean_root_mm, target_points_mm
from tune_hand.evaluation import evaluate_checkpoint
from tune_hand.model.pose_net import PoseNet
from tune_hand.rotation_tta import rotate_points
from tune_hand.runs import run, start_run

TINY = ["optim.epochs=1", "optim.batch_size=8", "data.num_workers=0", "model.channels=8", "model.blocks=2",
        "data.val_fraction=0.25", "eval.batch_size=16", "train.threads=1", "train.image_every=0"]


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def skeletons(n=4, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.normal(0.0, 0.03, (n, 21, 3))
    xyz[..., 2] += rng.uniform(0.5, 0.9, (n, 1))
    return xyz


# -- the target functions --------------------------------------------------------------------
def test_each_frame_subtracts_its_origin():
    xyz = skeletons()
    np.testing.assert_array_equal(target_points_mm(xyz, "camera"), xyz * 1000.0)
    np.testing.assert_array_equal(target_points_mm(xyz, "root_relative"), (xyz - xyz[:, :1]) * 1000.0)
    centroid = target_points_mm(xyz, "centroid_relative")
    np.testing.assert_allclose(centroid.mean(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(centroid, (xyz - xyz.mean(axis=1, keepdims=True)) * 1000.0, atol=1e-9)
    with pytest.raises(ValueError, match="centroid_relative"):
        target_points_mm(xyz, "wrist")


def test_mean_origin_is_the_wrist_for_root_relative_and_camera_and_the_centroid_otherwise():
    xyz = skeletons(6)
    old = xyz[:, 0].mean(axis=0) * 1000.0  # the formula before centroid targets existed
    np.testing.assert_array_equal(mean_root_mm(xyz), old)
    np.testing.assert_array_equal(mean_root_mm(xyz, "root_relative"), old)
    np.testing.assert_array_equal(mean_root_mm(xyz, "camera"), old)
    np.testing.assert_allclose(mean_root_mm(xyz, "centroid_relative"), xyz.mean(axis=(0, 1)) * 1000.0, atol=1e-9)


def test_centroid_ranges_are_narrower_than_the_wrist_ones():
    xyz = skeletons(50)
    wrist, centroid = (coordinate_ranges(xyz, t, 0.0) for t in ("root_relative", "centroid_relative"))
    assert ((centroid[:, 1] - centroid[:, 0]) < (wrist[:, 1] - wrist[:, 0])).all()
    pts = target_points_mm(xyz, "centroid_relative").reshape(-1, 3)
    np.testing.assert_allclose(centroid, np.stack([pts.min(0), pts.max(0)], axis=1))


@pytest.mark.parametrize("seed", range(4))
def test_centroid_target_round_trip_under_rotation_scale_and_translate(seed):
    """target -> camera frame gives the augmented points back within 1e-4 mm, and the target moves with
    the augmentation's 3D map like the points do (what makes it consistent with the warped image)."""
    aug = AugmentConfig(rotation_deg=180.0, scale=0.25, translate=0.15)
    rng = np.random.default_rng(seed)
    size = 64
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    K = np.array([[90.0, 0.0, 31.5 + rng.uniform(-3, 3)], [0.0, 92.0, 31.5 + rng.uniform(-3, 3)], [0.0, 0.0, 1.0]])
    xyz = skeletons(1, seed)[0]
    params = sample_params(aug, rng, size)
    _, K_out, xyz_out = apply(image, K, xyz, params, size)
    assert np.abs(xyz_out - xyz).max() > 1e-3  # the augmentation moved the hand

    target = target_points_mm(xyz_out, "centroid_relative")
    back = target + xyz_out.mean(axis=0) * 1000.0
    np.testing.assert_allclose(back, xyz_out * 1000.0, atol=1e-4, rtol=0)
    # The 3D map of rotation + zoom + shift through K (original depth kept) is linear: M @ p.
    M = np.linalg.lstsq(xyz, xyz_out, rcond=None)[0].T
    np.testing.assert_allclose(xyz @ M.T, xyz_out, atol=1e-9)
    np.testing.assert_allclose(target_points_mm(xyz, "centroid_relative") @ M.T, target, atol=1e-4, rtol=0)
    # And the image agrees: K_out projects the round-tripped points onto the warped joints.
    uv = (K_out @ (back / 1000.0).T).T
    uv_expected = (K_out @ xyz_out.T).T
    np.testing.assert_allclose(uv[:, :2] / uv[:, 2:], uv_expected[:, :2] / uv_expected[:, 2:], atol=1e-6)


def test_rotation_averaging_frame_commutes_with_the_centroid():
    xyz = torch.from_numpy(skeletons(3)) * 1000.0
    target = xyz - xyz.mean(dim=1, keepdim=True)
    for theta in (0.3, 2.0, -2.9):
        rotated = rotate_points(xyz, theta)
        np.testing.assert_allclose(rotate_points(target, theta).numpy(),
                                   (rotated - rotated.mean(dim=1, keepdim=True)).numpy(), atol=1e-9)


def test_to_camera_adds_the_mean_centroid_for_centroid_targets():
    cfg = load_config("small", ["model.channels=8", "model.blocks=2"])
    assert cfg.model.target == "centroid_relative"  # the small preset's frame
    origin = torch.tensor([3.0, -4.0, 600.0])
    model = PoseNet(cfg.model, 64, mean_root_mm=origin)
    pred = torch.randn(2, 21, 3)
    torch.testing.assert_close(model.to_camera(pred), pred + origin)


def test_trainer_targets_round_trip_on_augmented_batches(synth_data):
    from tune_hand.training import Trainer

    trainer = Trainer(load_config("small", TINY + ["augment.scale=0.2", "augment.translate=0.1"]), synth_data)
    reader = FreiHAND(synth_data, "training")
    train_xyz = reader.xyz[np.unique(trainer.train_idx % reader.num_unique)]
    np.testing.assert_allclose(trainer.model.mean_root_mm.numpy(), train_xyz.mean(axis=(0, 1)) * 1000.0, rtol=1e-6)
    batch = next(iter(trainer.train_loader))
    xyz = batch["xyz_mm"].double()
    y = trainer.targets(xyz)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros_like(y.mean(dim=1)), atol=1e-9, rtol=0)
    torch.testing.assert_close(y + xyz.mean(dim=1, keepdim=True), xyz, atol=1e-4, rtol=0)


# -- old root_relative runs --------------------------------------------------------------------
def test_a_root_relative_run_still_trains_evaluates_resumes_and_retrains(synth_data, tmp_path):
    from tune_hand.retrain import retrain

    cfg = load_config("small", TINY + ["model.target=root_relative"])
    out = tmp_path / "run"
    trainer = start_run(cfg, synth_data, out)
    assert trainer.cfg.model.target == "root_relative"
    reader = FreiHAND(synth_data, "training")
    train_xyz = reader.xyz[np.unique(trainer.train_idx % reader.num_unique)]
    # Exactly the wrist frame as before: the mean wrist in the buffer, the wrist subtracted from targets.
    np.testing.assert_array_equal(trainer.model.mean_root_mm.numpy(),
                                  torch.as_tensor(train_xyz[:, 0].mean(axis=0) * 1000.0, dtype=torch.float32).numpy())
    xyz = torch.from_numpy(skeletons(2)).float() * 1000.0
    torch.testing.assert_close(trainer.targets(xyz), xyz - xyz[:, :1], atol=0, rtol=0)
    run(trainer, out)

    scores = evaluate_checkpoint(out / "checkpoint.pt", synth_data, tta=2)
    assert scores["target"] == "root_relative" and "mean wrist" in scores["note"]
    assert np.isfinite(scores["pa_mpjpe_mm"]) and "baselines" in scores

    resumed = start_run(None, synth_data, out, resume=True, overrides=["optim.epochs=2"])
    assert resumed.epoch == 1 and resumed.cfg.model.target == "root_relative"
    run(resumed, out)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2

    export = tmp_path / "export"  # what `tune-hand best --export` writes
    export.mkdir()
    (export / "config.yaml").write_text((out / "config.yaml").read_text())
    (export / "provenance.json").write_text(json.dumps({"trial_id": "old", "epoch": 2, "metric": "rr_mpjpe_mm",
                                                        "value": 90.0}))
    summary = retrain(export, synth_data, tmp_path / "final", epochs=1, tta=2, progress=lambda line: None)
    assert load_checkpoint(tmp_path / "final" / "checkpoint.pt")["config"]["model"]["target"] == "root_relative"
    assert np.isfinite(summary["pa_mpjpe_mm"])


# -- rotation averaging in the hand's frame ------------------------------------------------------
class ConstantShape(torch.nn.Module):
    """Predicts one fixed hand whatever the image: articulation without orientation."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.shape = torch.from_numpy(target_points_mm(skeletons(1, 3), "centroid_relative")[0]).float()

    def forward(self, images):
        return self.shape.expand(images.shape[0], 21, 3).clone()


def test_rotation_averaging_of_a_centroid_model_averages_in_the_hands_frame():
    from tune_hand.metrics import pa_mpjpe_mm
    from tune_hand.rotation_tta import predict_rotation_averaged

    images = torch.rand(2, 3, 32, 32)
    K = torch.tensor([[40.0, 0.0, 15.5], [0.0, 40.0, 15.5], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    model = ConstantShape("centroid_relative")
    gt = model.shape.expand(2, 21, 3).double().numpy()
    hand = predict_rotation_averaged(model, images, K, 10)  # the default for centroid targets
    camera = predict_rotation_averaged(model, images, K, 10, frame="camera")
    # Rotated back, the n copies disagree in orientation only: aligned, they average to the shape itself;
    # in the camera frame they smear into a disc about the optical axis.
    assert pa_mpjpe_mm(hand.double().numpy(), gt) < 1e-3
    assert pa_mpjpe_mm(camera.double().numpy(), gt) > 5.0
    torch.testing.assert_close(predict_rotation_averaged(model, images, K, 10, frame="hand"), hand)


@pytest.mark.parametrize("target", ["camera", "root_relative"])
def test_rotation_averaging_of_the_older_targets_is_the_camera_frame_mean_bit_for_bit(target):
    from tune_hand.rotation_tta import predict_rotation_averaged

    images = torch.rand(2, 3, 32, 32)
    K = torch.tensor([[40.0, 0.0, 15.5], [0.0, 40.0, 15.5], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    model = ConstantShape(target)
    assert torch.equal(predict_rotation_averaged(model, images, K, 6),
                       predict_rotation_averaged(model, images, K, 6, frame="camera"))
    with pytest.raises(ValueError, match="frame"):
        predict_rotation_averaged(model, images, K, 6, frame="wrist")
