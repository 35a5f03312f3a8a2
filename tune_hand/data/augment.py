"""3D-consistent augmentation: one affine matrix per sample, one warp, labels moved through the camera.

Every geometric op is a 3x3 pixel-space affine. They compose, together with the resize to the network's
input size S, into ONE matrix and ONE `cv2.warpAffine` (no intermediate images, uint8 throughout):

    A_total = shift (output px) @ resize_affine(W, S) @ scale @ rotation @ flip

Flip, rotation and scale act about the principal point c = (cx, cy) of K: each is K @ M @ K^-1 for an M
acting on the camera's normalised coordinates (x/z, y/z), so each is an exact 3D operation for any K
(fx != fy, off-centre principal point):
- rotation, M = rot_z(theta), built by `rotation_affine(K, theta)`: the image of the hand whose points
  are xyz @ rot_z(theta).T. Rotating about the image centre instead is, with an off-centre principal
  point, that rotation plus a shift of (I - R)(c - centre) px, which is no rigid 3D motion of the hand.
  For FreiHAND crops the two differ by the principal point's offset from the image centre (up to twice
  that offset, at 180 degrees); the paper's authors rotated about the image centre.
- flip, M = diag(-1, 1, 1): u' = 2 cx - u, i.e. the familiar u' = W - 1 - u when the principal point is
  at the image centre. The exact mirror x -> -x of the 3D points: a RIGHT HAND BECOMES A LEFT ONE.
  (u' = W - 1 - u with an off-centre principal point would give x' = -x + (W - 1 - 2 cx) z / fx, a
  sheared mirror.)
- scale, M = diag(s, s, 1): zoom by s in [1 - scale, 1 + scale] about the principal point; x and y
  scale by s, z is kept (a bigger or smaller hand at the same depth, the paper's 2D scale).
- shift: a translation in output pixels after the resize, +-translate * S per axis; z is kept, so x and
  y move by shift * z / f.

Labels: uv = project(K, xyz), uv' = apply_affine(A_total, uv), K_out = resize_affine(W, S) @ K,
xyz' = backproject(K_out, uv', z). The label is, by construction, the 3D point that the output camera
K_out sees where the warped image shows the joint; for a pure rotation it equals xyz @ rot_z(theta).T.

Border: BORDER_CONSTANT, black. Rotations up to 180 degrees bring the corners into view; BORDER_REFLECT
would fill them with mirrored copies of fingers that have no labels (phantom hands), while black is
plainly "no data", and it is also what rotation averaging at test time shows the model.

Colour jitter runs on the input before the warp, so the black border stays black. The warp is bilinear;
when it shrinks the image by more than 1.25x (224 px FreiHAND crops to a 64 px network input), the input
is blurred first (Gaussian, sigma = (f - 1) / 2 as in skimage's anti-aliasing), or thin fingers alias.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..config import AugmentConfig
from ..geometry import apply_affine, backproject, project, resize_affine, rotation_affine

_LUMA = np.array([0.299, 0.587, 0.114])  # RGB weights of grey (ITU-R BT.601), as torchvision uses
_ANTIALIAS_ABOVE = 1.25  # shrink factor above which the input is blurred before the warp


@dataclass
class AugmentParams:
    """One sample's augmentation; the defaults are the identity."""

    theta: float = 0.0  # radians about the optical axis; rot_z(theta) turns +x towards +y
    flip: bool = False  # mirror about the principal point's column (x -> -x)
    scale: float = 1.0  # zoom factor about the principal point
    shift: tuple[float, float] = (0.0, 0.0)  # (du, dv) in OUTPUT pixels
    jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue deltas

    @property
    def is_identity(self) -> bool:
        return (self.theta == 0.0 and not self.flip and self.scale == 1.0 and tuple(self.shift) == (0.0, 0.0)
                and self.jitter is None)


def sample_params(cfg: AugmentConfig, rng: np.random.Generator, size: int) -> AugmentParams:
    """Draw one sample's parameters; `size` is the output image size S (the shift is +-translate * S px).

    Always draws the same count of numbers in the same order, whatever is switched on, so turning one op
    on or off does not change what the others draw for a given seed.
    """
    gate = rng.random(5)
    u = rng.uniform(-1.0, 1.0, size=8)
    theta = float(np.deg2rad(cfg.rotation_deg) * u[0]) if gate[0] < cfg.rotation_prob else 0.0
    flip = bool(gate[1] < cfg.flip)
    scale = float(1.0 + cfg.scale * u[1]) if gate[2] < cfg.scale_prob else 1.0
    shift = (0.0, 0.0)
    if gate[3] < cfg.translate_prob:
        shift = (float(cfg.translate * size * u[2]), float(cfg.translate * size * u[3]))
    jitter = None
    x = cfg.color_jitter
    if x > 0 and gate[4] < cfg.color_jitter_prob:
        jitter = (float(x * u[4]), float(x * u[5]), float(x * u[6]), float(x / 10 * u[7]))
    return AugmentParams(theta=theta, flip=flip, scale=scale, shift=shift, jitter=jitter)


def geometric_matrix(params: AugmentParams, K: np.ndarray, size_in: int, size_out: int) -> np.ndarray:
    """The 3x3 affine from input pixels to output pixels: shift @ resize @ scale @ rotation @ flip."""
    K = np.asarray(K, dtype=np.float64)
    K_inv = np.linalg.inv(K)
    A = np.eye(3)
    if params.flip:
        A = K @ np.diag([-1.0, 1.0, 1.0]) @ K_inv @ A
    if params.theta != 0.0:
        A = rotation_affine(K, params.theta) @ A
    if params.scale != 1.0:
        A = K @ np.diag([params.scale, params.scale, 1.0]) @ K_inv @ A
    A = resize_affine(size_in, size_out) @ A
    shift = np.eye(3)
    shift[:2, 2] = params.shift
    return shift @ A


def apply(
    image: np.ndarray, K: np.ndarray, xyz: np.ndarray | None, params: AugmentParams | None, size_out: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image S x S uint8, K_out, xyz_out) for a square uint8 image; params None = resize only.

    K_out = resize_affine(W, S) @ K is the camera of the output image; xyz_out (same units as xyz) are the
    points that K_out projects onto the joints of the warped image. xyz None (no ground truth) stays None.
    """
    h, w = image.shape[:2]
    if h != w:
        raise ValueError(f"augment.apply expects a square image, got {w}x{h}")
    params = params or AugmentParams()
    K = np.asarray(K, dtype=np.float64)
    if params.jitter is not None:
        image = color_jitter(image, params.jitter)
    A = geometric_matrix(params, K, w, size_out)
    K_out = resize_affine(w, size_out) @ K
    out = image if (size_out == w and np.allclose(A, np.eye(3), atol=1e-12)) else _warp(image, A, size_out)
    xyz_out = None
    if xyz is not None:
        xyz = np.asarray(xyz, dtype=np.float64)
        xyz_out = backproject(K_out, apply_affine(A, project(K, xyz)), xyz[..., 2])
    return np.ascontiguousarray(out), K_out, xyz_out


def _warp(image: np.ndarray, A: np.ndarray, size_out: int) -> np.ndarray:
    """One bilinear warp into a black S x S canvas, anti-aliased when it shrinks the image."""
    shrink = 1.0 / np.linalg.svd(A[:2, :2], compute_uv=False)[-1]  # worst-case input px per output px
    if shrink > _ANTIALIAS_ABOVE:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=(shrink - 1.0) / 2.0)
    if image.ndim == 3 and image.shape[2] == 3:
        # OpenCV's bilinear warp is ~2x faster on 4-channel uint8 than on 3 (benchmarks/bench_input.py,
        # "4-channel warp": +30% items/s per core); the output is bit-identical.
        rgba = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA)
        return cv2.warpAffine(rgba, A[:2], (size_out, size_out), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))[..., :3]
    return cv2.warpAffine(image, A[:2], (size_out, size_out), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def color_jitter(image: np.ndarray, jitter: tuple[float, float, float, float]) -> np.ndarray:
    """Brightness, contrast, saturation and hue deltas applied as one 3x4 colour matrix (uint8 in and out).

    brightness b: x * (1 + b); contrast c: blend towards the image's mean grey by factor 1 + c; saturation
    s: blend towards each pixel's grey by factor 1 + s; hue h (fraction of the circle): rotation of the
    colour about the grey axis by 2 pi h, which keeps greys grey. All four are linear in RGB, so they
    compose into one matrix and one saturating `cv2.transform` pass.
    """
    b, c, s, h = (float(v) for v in jitter)
    mean_grey = float(np.dot(cv2.mean(image)[:3], _LUMA))
    saturation = (1.0 + s) * np.eye(3) - s * np.outer(np.ones(3), _LUMA)
    M = _hue_rotation(2.0 * np.pi * h) @ saturation * ((1.0 + c) * (1.0 + b))
    # Contrast pulls towards the mean grey of the brightened image; saturation and hue keep grey fixed.
    offset = np.full((3, 1), -c * (1.0 + b) * mean_grey)
    return cv2.transform(image, np.hstack([M, offset]).astype(np.float32))


def _hue_rotation(phi: float) -> np.ndarray:
    """Rotation of RGB space by phi about the grey axis (1, 1, 1) (Rodrigues' formula)."""
    k = np.ones(3) / np.sqrt(3.0)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.cos(phi) * np.eye(3) + np.sin(phi) * cross + (1.0 - np.cos(phi)) * np.outer(k, k)
