"""Rotation averaging at test time (paper section 3.4; DESIGN section 2), on the device.

    model.eval()
    pred = predict_rotation_averaged(model, images, K, n=10)   # (B, 21, 3), model's target frame

For theta_k = 2 pi k / n, rotate each image about the optical axis with the exact pixel
affine `geometry.rotation_affine(K_b, theta_k)`, predict, rotate the predicted points back
by rot_z(-theta_k) and average. A rotation about the optical axis is linear in the points,
so rotating back is right for camera-frame and root-relative predictions alike.

Centroid-relative models (`model.target: centroid_relative`) average in the hand's frame
instead: each rotated-back prediction is first rotated about its centroid onto the consensus
(Kabsch, no scale, two rounds starting from the plain prediction), then the n are averaged.
A model that has learnt the hand's articulation before its orientation (the PA loss does
that) predicts the right shape at the wrong angle; averaging such shapes in the camera frame
smears them into a disc (measured: PA-MPJPE 22.2 -> 37.2 mm), averaging them aligned removes
the per-angle noise. For a rotation-equivariant model the alignments are the identity and the
two averages agree. The other targets keep the camera-frame average, bit for bit.

The warp is `F.affine_grid` + `F.grid_sample` (bilinear, zero fill, align_corners=False),
the same image as training's `cv2.warpAffine(image, rotation_affine(K, theta)[:2])` with a
black border: a rotated image's corners come from outside the original and are zeros.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import rot_z, rotation_affine


def rotation_angles(n: int) -> np.ndarray:
    """n equally spaced angles 2 pi k / n, k = 0..n-1 (radians); the first is exactly 0."""
    return 2.0 * math.pi * np.arange(n) / n


def rotate_images(images: torch.Tensor, K: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate images (B, C, S, S) by `theta` radians about the optical axis of each K (B, 3, 3).

    Shows the hand whose points are `xyz @ rot_z(theta).T`; pixels from outside the original
    image are zeros. Stays on the images' device, dtype and memory format.
    """
    _check_images_K(images, K)
    return _rotated_copies(images, K, np.array([theta], dtype=np.float64))


def rotate_points(points: torch.Tensor, theta: float) -> torch.Tensor:
    """points (..., 3) @ rot_z(theta).T: what `rotate_images` does to the hand's 3D points."""
    rot = torch.as_tensor(rot_z(theta), dtype=points.dtype, device=points.device)
    return points @ rot.T


@torch.no_grad()
def predict_rotation_averaged(model: torch.nn.Module, images: torch.Tensor, K: torch.Tensor, n: int,
                              chunk: int | None = None, frame: str | None = None) -> torch.Tensor:
    """Average of the model's predictions over n rotations of the images; (B, 21, 3) float32.

    Args:
        model: a PoseNet (or any module images (B, 3, S, S) -> (B, J, 3)); putting it in eval
            mode is the caller's job.
        images: (B, 3, S, S) float in [0, 1] on the model's device.
        K: (B, 3, 3) intrinsics of these images (after any resize), any device.
        n: number of angles; n = 1 returns exactly `model(images)`.
        chunk: rotated copies per forward pass (1: n forwards of batch B; n: one forward of
            batch n * B). None picks 1 on CPU, where a loop of small batches measured faster
            (DESIGN section 7), and n elsewhere.
        frame: "camera" averages the rotated-back points as they are; "hand" aligns them about
            their centroids first (module docstring). None: "hand" for a model whose `target`
            is centroid_relative, else "camera".
    """
    _check_images_K(images, K)
    if n < 1:
        raise ValueError(f"n={n}: the number of rotations must be at least 1")
    if chunk is None:
        chunk = 1 if images.device.type == "cpu" else n
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: must be at least 1")
    if frame is None:
        frame = "hand" if getattr(model, "target", None) == "centroid_relative" else "camera"
    if frame not in ("camera", "hand"):
        raise ValueError(f"frame={frame!r}: must be camera or hand")
    if n == 1:  # theta = 0: no warp, no rotation back, bitwise the plain prediction
        return model(images).float()

    thetas = rotation_angles(n)
    batch = images.shape[0]
    preds = []
    for start in range(0, n, chunk):
        part = thetas[start:start + chunk]
        out = model(_rotated_copies(images, K, part)).float()
        preds.append(out.reshape(len(part), batch, *out.shape[1:]))
    preds = torch.cat(preds)  # (n, B, J, 3), each in its rotated frame
    back = torch.as_tensor(rot_z(-thetas), dtype=preds.dtype, device=preds.device)  # (n, 3, 3)
    preds = torch.einsum("nij,nbkj->nbki", back, preds)
    return preds.mean(dim=0) if frame == "camera" else _hand_frame_mean(preds)


def _hand_frame_mean(preds: torch.Tensor, rounds: int = 2) -> torch.Tensor:
    """Mean of (n, B, J, 3) predictions after rotating each about its centroid onto the consensus."""
    centroids = preds.mean(dim=2, keepdim=True)
    shapes = (preds - centroids).double()
    consensus = shapes[0]  # the plain prediction (theta = 0)
    for _ in range(rounds):
        cov = shapes.transpose(-1, -2) @ consensus.expand_as(shapes)  # (n, B, 3, 3)
        u, _, vh = torch.linalg.svd(cov)
        d = torch.sign(torch.linalg.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)))
        d = torch.where(d == 0, torch.ones_like(d), d)
        fix = torch.ones(*d.shape, 3, dtype=d.dtype, device=d.device)
        fix[..., 2] = d
        rot = vh.transpose(-1, -2) @ torch.diag_embed(fix) @ u.transpose(-1, -2)  # proper rotations
        consensus = (shapes @ rot.transpose(-1, -2)).mean(dim=0)
    return (consensus.to(preds.dtype) + centroids.mean(dim=0))


def _rotated_copies(images: torch.Tensor, K: torch.Tensor, thetas: np.ndarray) -> torch.Tensor:
    """(len(thetas) * B, C, S, S), angle-major. theta == 0 takes the images as they are (no
    warp, no resampling blur), which is what makes n = 1 bitwise the plain prediction."""
    batch = images.shape[0]
    moving = thetas != 0.0
    warped = None
    if moving.any():
        maps = _sampling_maps(K, thetas[moving], images.shape[-2:])  # (m, B, 2, 3)
        maps = torch.as_tensor(maps, dtype=images.dtype, device=images.device).flatten(0, 1)
        src = images.repeat(int(moving.sum()), 1, 1, 1)
        grid = F.affine_grid(maps, list(src.shape), align_corners=False)
        warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped = warped.view(int(moving.sum()), batch, *images.shape[1:])
    copies, w = [], 0
    for is_moving in moving:
        if is_moving:
            copies.append(warped[w])
            w += 1
        else:
            copies.append(images)
    out = torch.cat(copies) if len(copies) > 1 else copies[0]
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _sampling_maps(K: torch.Tensor, thetas: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """affine_grid matrices (m, B, 2, 3): for each OUTPUT pixel, where to sample the input.

    rotation_affine(K, theta) maps input pixels to output pixels (OpenCV convention, pixel
    centres at integers); grid_sample needs the inverse, which is rotation_affine(K, -theta).
    affine_grid works in normalised coordinates where, with align_corners=False, pixel
    centre u sits at (2u + 1) / W - 1; conjugating by that map converts the pixel affine.
    """
    h, w = size
    Kn = K.detach().to("cpu", torch.float64).numpy()
    inverse = rotation_affine(Kn[None], -thetas[:, None])  # (m, B, 3, 3)
    to_norm = np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])
    return (to_norm @ inverse @ np.linalg.inv(to_norm))[..., :2, :]


def _check_images_K(images: torch.Tensor, K: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected images (B, C, S, S), got {tuple(images.shape)}")
    if tuple(K.shape) != (images.shape[0], 3, 3):
        raise ValueError(f"expected K ({images.shape[0]}, 3, 3) for {images.shape[0]} images, got {tuple(K.shape)}")
