"""Pure camera geometry shared by the renderer, augmentation and rotation averaging.

Conventions (used everywhere in tune-hand):
- Points are camera-frame xyz, z forward; FreiHAND stores metres, the model works in mm.
- Pixel coordinates follow OpenCV: the centre of pixel (row r, column c) is at uv = (c, r).
  Projection is uv = (K @ xyz)[:2] / z, so a point projecting to uv = (3, 5) lies on the
  centre of column 3, row 5, and `cv2.warpAffine` with a 2x3 matrix maps these coordinates.
- `rot_z(theta)` turns +x towards +y (clockwise on screen, since image y points down).
  Rotating an image by the affine `rotation_affine(K, theta)` shows exactly the hand whose
  points are `xyz @ rot_z(theta).T`: the homography of a rotation about the optical axis is
  K Rz K^-1, which is affine because Rz leaves z alone. With fx == fy and the principal
  point at the image centre it is the plain rotation about the image centre.
"""

from __future__ import annotations

import numpy as np


def project(K: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """uv (..., J, 2) of camera-frame points xyz (..., J, 3) with intrinsics K (..., 3, 3)."""
    p = np.einsum("...ij,...kj->...ki", K, xyz)
    return p[..., :2] / p[..., 2:3]


def backproject(K: np.ndarray, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Camera-frame points (..., J, 3) that project to uv (..., J, 2) at depths z (..., J)."""
    ones = np.ones_like(uv[..., :1])
    rays = np.einsum("...ij,...kj->...ki", np.linalg.inv(K), np.concatenate([uv, ones], axis=-1))
    return rays / rays[..., 2:3] * z[..., None]


def rot_z(theta: float | np.ndarray) -> np.ndarray:
    """Rotation matrix (..., 3, 3) by `theta` radians about the optical (z) axis."""
    theta = np.asarray(theta, dtype=np.float64)
    c, s = np.cos(theta), np.sin(theta)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2)


def rotation_affine(K: np.ndarray, theta: float | np.ndarray) -> np.ndarray:
    """3x3 pixel-space affine (..., 3, 3) that rotates an image by `theta` about the optical axis.

    Exact for any K: it is K @ rot_z(theta) @ K^-1, whose last row is (0, 0, 1).
    """
    K = np.asarray(K, dtype=np.float64)
    H = K @ rot_z(theta) @ np.linalg.inv(K)
    return H / H[..., 2:3, 2:3]


def resize_affine(size_in: int, size_out: int) -> np.ndarray:
    """3x3 affine that maps pixel coordinates of a size_in image onto a size_out resize of it."""
    s = size_out / size_in
    return np.array([[s, 0.0, 0.5 * s - 0.5], [0.0, s, 0.5 * s - 0.5], [0.0, 0.0, 1.0]])


def apply_affine(A: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Apply a 3x3 (or 2x3) affine to points uv (..., 2)."""
    return uv @ A[:2, :2].T + A[:2, 2]
