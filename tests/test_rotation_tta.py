"""Rotation averaging: the warp matches OpenCV's, and averaging commutes with the rotation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from tune_hand.geometry import apply_affine, project, rot_z, rotation_affine
from tune_hand.model.pose_net import PoseNet
from tune_hand.rotation_tta import predict_rotation_averaged, rotate_images, rotate_points, rotation_angles
from tune_hand.config import ModelConfig

S = 64
# Deliberately not the plain rotation about the image centre: fx != fy, off-centre principal point.
K0 = np.array([[90.0, 0.0, 30.5], [0.0, 80.0, 34.0], [0.0, 0.0, 1.0]])
K1 = np.array([[70.0, 0.0, 32.0], [0.0, 70.0, 31.0], [0.0, 0.0, 1.0]])
MARKERS_UV = [(36.0, 27.5), (28.3, 38.0), (33.0, 33.0)]  # one blob per channel, near the centre


def marker_images(uv=MARKERS_UV, batch: int = 2, sigma: float = 2.5) -> torch.Tensor:
    """(batch, 3, S, S) float images with a Gaussian blob per channel at pixel uv (OpenCV centres)."""
    rows, cols = np.mgrid[0:S, 0:S].astype(np.float64)
    channels = [np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * sigma**2)) for u, v in uv]
    return torch.tensor(np.stack(channels), dtype=torch.float32).expand(batch, -1, -1, -1).clone()


def centroids(images: torch.Tensor) -> torch.Tensor:
    """Intensity centroid uv (B, C, 2) of each channel, in pixel coordinates."""
    rows, cols = torch.meshgrid(torch.arange(S, dtype=images.dtype), torch.arange(S, dtype=images.dtype),
                                indexing="ij")
    mass = images.sum(dim=(2, 3))
    return torch.stack([(images * cols).sum(dim=(2, 3)) / mass, (images * rows).sum(dim=(2, 3)) / mass], -1)


class MarkerOracle(nn.Module):
    """An exactly rotation-equivariant 'model': back-projects each channel's blob to depth 400 mm.

    The 21 joints are the 3 markers repeated. Rotating the image by rotation_affine(K, t)
    moves each blob to K rot_z(t) K^-1 uv, whose back-projection is rot_z(t) of the point.
    Batches of n * B rotated copies (chunk = n) are angle-major, so copy i has K[i % B].
    """

    def __init__(self, K: torch.Tensor):
        super().__init__()
        self.K_inv = torch.linalg.inv(K)
        self.calls: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(images.shape[0])
        uv = centroids(images)
        rays = torch.cat([uv, torch.ones_like(uv[..., :1])], -1)
        K_inv = self.K_inv.repeat(images.shape[0] // len(self.K_inv), 1, 1)
        xyz = 400.0 * torch.einsum("bij,bcj->bci", K_inv, rays)
        return xyz.repeat(1, 7, 1)


def both_K() -> torch.Tensor:
    return torch.tensor(np.stack([K0, K1]), dtype=torch.float32)


# -- the warp ----------------------------------------------------------------------------------

@pytest.mark.parametrize("theta", [0.3, 1.7, -2.5, np.pi])
def test_rotate_images_matches_cv2_warp_affine(theta):
    images = marker_images()
    ours = rotate_images(images, both_K(), theta)
    for b, K in enumerate((K0, K1)):
        A = rotation_affine(K, theta)
        src = images[b].permute(1, 2, 0).numpy()
        cv = cv2.warpAffine(src, A[:2], (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        cv = torch.from_numpy(cv).permute(2, 0, 1)
        assert (ours[b] - cv).abs().max() < 0.02  # OpenCV quantises sample positions to 1/32 px
        assert torch.allclose(centroids(ours[b:b + 1]), centroids(cv[None]), atol=0.02)
        moved = apply_affine(A, np.array(MARKERS_UV))
        assert np.allclose(centroids(ours[b:b + 1])[0].numpy(), moved, atol=0.02)


def test_rotated_image_shows_the_rotated_points():
    xyz = np.array([[20.0, -10.0, 400.0], [-15.0, 25.0, 450.0]])
    theta = 1.1
    uv = project(K0, xyz)
    assert np.allclose(project(K0, xyz @ rot_z(theta).T), apply_affine(rotation_affine(K0, theta), uv))
    points = torch.tensor(xyz)
    assert torch.allclose(rotate_points(rotate_points(points, theta), -theta), points)
    assert torch.allclose(rotate_points(points, theta), torch.tensor(xyz @ rot_z(theta).T))


def test_corners_are_filled_with_zeros():
    rotated = rotate_images(torch.ones(1, 3, S, S), torch.tensor(K1[None], dtype=torch.float32), np.pi / 4)
    assert rotated[0, :, 0, 0].abs().max() == 0 and rotated[0, :, S // 2, S // 2].min() == 1


def test_angles_are_equally_spaced_from_zero():
    assert np.allclose(rotation_angles(4), [0.0, np.pi / 2, np.pi, 3 * np.pi / 2])
    assert rotation_angles(10)[0] == 0.0


# -- averaging ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 5, 10])
def test_averaging_an_equivariant_oracle_changes_nothing(n):
    images, K = marker_images(), both_K()
    oracle = MarkerOracle(K)
    plain = oracle(images)
    averaged = predict_rotation_averaged(oracle, images, K, n=n)
    # 0.01 mm at 400 mm and f = 70..90 px is ~0.002 px of marker position
    torch.testing.assert_close(averaged, plain, atol=0.01, rtol=0)


def test_oracle_sees_each_rotation():
    """Each rotated copy, rotated back, is the plain prediction: no angle is skipped or doubled."""
    images, K = marker_images(), both_K()
    oracle = MarkerOracle(K)
    for theta in rotation_angles(6)[1:]:
        seen = oracle(rotate_images(images, K, theta))
        # bilinear resampling moves a blob's centroid by < 0.01 px (0.05 mm here)
        torch.testing.assert_close(rotate_points(seen, -theta), oracle(images), atol=0.05, rtol=0)


def calibrated_posenet() -> PoseNet:
    """A small PoseNet whose eval predictions vary (BatchNorm statistics from one batch)."""
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="efficientnet-b0", width_coefficient=0.5, depth_coefficient=0.5, channels=16,
                      blocks=2, pretrained=False)
    model = PoseNet(cfg, S, ranges_mm=torch.tensor([[-100.0, 100.0], [-100.0, 100.0], [300.0, 900.0]]))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(8, 3, S, S))
    return model.eval()


def test_n1_is_exactly_the_plain_prediction():
    model = calibrated_posenet()
    images = torch.rand(3, 3, S, S)
    K = torch.tensor(np.stack([K0, K1, K0]), dtype=torch.float32)
    with torch.no_grad():
        plain = model(images)
    assert torch.equal(predict_rotation_averaged(model, images, K, n=1), plain)
    assert plain.std() > 1.0


def test_chunk_1_and_chunk_n_agree():
    model = calibrated_posenet()
    images, K = torch.rand(2, 3, S, S), both_K()
    looped = predict_rotation_averaged(model, images, K, n=4, chunk=1)
    batched = predict_rotation_averaged(model, images, K, n=4, chunk=4)
    odd = predict_rotation_averaged(model, images, K, n=4, chunk=3)
    # Points in mm of magnitude ~100: float32 batched vs looped convolutions differ by ~1e-5 mm.
    torch.testing.assert_close(looped, batched, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(looped, odd, atol=1e-3, rtol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(looped, model(images), atol=1e-3)  # a random model is not equivariant


def test_chunk_sets_the_forward_batch():
    images, K = marker_images(), both_K()
    oracle = MarkerOracle(K)
    predict_rotation_averaged(oracle, images, K, n=5)  # CPU default: one angle per forward
    assert oracle.calls == [2] * 5
    oracle.calls.clear()
    predict_rotation_averaged(oracle, images, K, n=5, chunk=5)
    assert oracle.calls == [10]


def test_channels_last_images_stay_channels_last():
    images = marker_images().contiguous(memory_format=torch.channels_last)
    assert rotate_images(images, both_K(), 0.5).is_contiguous(memory_format=torch.channels_last)


def test_bad_arguments_raise():
    images = marker_images()
    with pytest.raises(ValueError, match="K"):
        predict_rotation_averaged(MarkerOracle(both_K()), images, both_K()[:1], n=2)
    with pytest.raises(ValueError, match="n=0"):
        predict_rotation_averaged(MarkerOracle(both_K()), images, both_K(), n=0)
