"""3D-consistent augmentation: one affine matrix per sample, one warp, labels moved through the camera.

Every geometric op is a 3x3 pixel-space affine. They compose, together with the resize to the network's
input size S, into ONE matrix and ONE `cv2.warpAffine` (no intermediate images, uint8 throughout):

    A_total = shift (output px) @ resize_affine(W, S) @ scale @ rotation @ flip

Flip, rotation and scale act about the principal point c = (cx, cy) of K: each is K @ M @ K^-1 for an M
acting on the camera's normalised coordinates (x/z, y/z), so each is an exact 3D operation for any K
(fx != fy, off-centre principal point):
- rotation, M = rot_z(theta), the matrix of `geometry.rotation_affine(K, theta)`: the image of the hand whose points
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
xyz' = backproject(K_out, uv', z), which `geometry` computes as one closed-form 3x3 map. The label is, by
construction, the 3D point that the output camera K_out sees where the warped image shows the joint; for a
pure rotation it equals xyz @ rot_z(theta).T.

Border: BORDER_CONSTANT, black. Rotations up to 180 degrees bring the corners into view; BORDER_REFLECT
would fill them with mirrored copies of fingers that have no labels (phantom hands), while black is
plainly "no data", and it is also what rotation averaging at test time shows the model.

Colour jitter runs on the input before the warp, so the black border stays black. The warp is bilinear;
when it shrinks the image by more than 1.25x (224 px FreiHAND crops to a 64 px network input), the input
is blurred first (Gaussian, sigma = (f - 1) / 2 as in skimage's anti-aliasing), or thin fingers alias.

Cost (benchmarks/bench_input.py; one 224 px item on one core): the JPEG decode and the warp take about
the same time, and everything else is kept small around them: the matrix and the labels are closed-form
scalar algebra (`geometry`), the warp runs on 4 channels (OpenCV's bilinear warp is about 1.7x faster on
4-channel uint8 than on 3), and its output is split straight into the (3, S, S) planes the model takes.
`geometry` alone is what a device-side warp needs (`dataset.warp_batch`): the same matrix and labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..config import AugmentConfig

LUMA = np.array([0.299, 0.587, 0.114])  # RGB weights of grey (ITU-R BT.601), as torchvision uses
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


_IDENTITY = AugmentParams()
_EYE = np.eye(3)


def sample_params(cfg: AugmentConfig, rng: np.random.Generator, size: int) -> AugmentParams:
    """Draw one sample's parameters; `size` is the output image size S (the shift is +-translate * S px).

    Always draws the same count of numbers in the same order, whatever is switched on, so turning one op
    on or off does not change what the others draw for a given seed.
    """
    draws = rng.random(13)  # one call: the same stream as random(5) then uniform(-1, 1, size=8)
    gate, u = draws[:5].tolist(), (draws[5:] * 2.0 - 1.0).tolist()
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


def geometry(params: AugmentParams, K: np.ndarray, xyz: np.ndarray | None, size_in: int, size_out: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(A, K_out, xyz_out) of one sample, in closed form; no image is touched.

    A is the 3x3 affine from input to output pixels: shift @ resize @ K M K^-1, where M = scale * rot_z(theta)
    @ flip acts on (x/z, y/z). K_out = resize_affine(size_in, size_out) @ K. xyz_out = K_out^-1 A K xyz, which
    is M xyz plus the shift moved to the camera at each point's depth: exactly what project -> A -> backproject
    gives, in one 3x3 map. Scalars throughout: a handful of 3x3 numpy products would cost more than this.
    """
    (fx, sk, cx), (_, fy, cy) = K[0].tolist(), K[1].tolist()
    cos, sin = math.cos(params.theta) * params.scale, math.sin(params.theta) * params.scale
    f = -1.0 if params.flip else 1.0
    m00, m01, m10, m11 = cos * f, -sin, sin * f, cos  # M's 2x2 block, normalised camera coordinates
    # B = Kl M Kl^-1 with Kl = [[fx, sk], [0, fy]] (K's 2x2 block): the same map in input pixels.
    i00, i01, i11 = 1.0 / fx, -sk / (fx * fy), 1.0 / fy
    p00, p01, p10, p11 = fx * m00 + sk * m10, fx * m01 + sk * m11, fy * m10, fy * m11
    b00, b01, b10, b11 = p00 * i00, p00 * i01 + p01 * i11, p10 * i00, p10 * i01 + p11 * i11
    r = size_out / size_in
    o = 0.5 * r - 0.5
    du, dv = params.shift
    A = np.array([[r * b00, r * b01, r * (cx - b00 * cx - b01 * cy) + o + du],
                  [r * b10, r * b11, r * (cy - b10 * cx - b11 * cy) + o + dv],
                  [0.0, 0.0, 1.0]])
    K_out = np.array([[r * fx, r * sk, r * cx + o], [0.0, r * fy, r * cy + o], [0.0, 0.0, 1.0]])
    xyz_out = None
    if xyz is not None:
        # The shift in output px at depth z is z * Kl_out^-1 (du, dv), Kl_out = r Kl.
        d0, d1 = (i00 * du + i01 * dv) / r, i11 * dv / r
        T = np.array([[m00, m01, d0], [m10, m11, d1], [0.0, 0.0, 1.0]])
        xyz_out = np.asarray(xyz, dtype=np.float64) @ T.T
    return A, K_out, xyz_out


def geometric_matrix(params: AugmentParams, K: np.ndarray, size_in: int, size_out: int) -> np.ndarray:
    """The 3x3 affine from input pixels to output pixels: shift @ resize @ scale @ rotation @ flip."""
    return geometry(params, K, None, size_in, size_out)[0]


def antialias_sigma(A: np.ndarray) -> float:
    """Gaussian sigma (input px) to blur with before warping by A; 0 when A shrinks by at most 1.25x.

    The shrink factor is the worst case, 1 / the smallest singular value of A's 2x2 block (closed form).
    """
    (a, b, _), (c, d, _) = A[:2].tolist()
    fro, det = a * a + b * b + c * c + d * d, a * d - b * c
    sigma_min = math.sqrt(max(0.5 * (fro - math.sqrt(max(fro * fro - 4.0 * det * det, 0.0))), 1e-24))
    shrink = 1.0 / sigma_min
    return (shrink - 1.0) / 2.0 if shrink > _ANTIALIAS_ABOVE else 0.0


def apply(
    image: np.ndarray, K: np.ndarray, xyz: np.ndarray | None, params: AugmentParams | None, size_out: int,
    *, chw: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image S x S uint8, K_out, xyz_out) for a square uint8 image; params None = resize only.

    K_out = resize_affine(W, S) @ K is the camera of the output image; xyz_out (same units as xyz) are the
    points that K_out projects onto the joints of the warped image. xyz None (no ground truth) stays None.
    The image comes back (S, S, C), or with chw=True as a contiguous (C, S, S) array, the model's layout,
    without a separate transposing copy.
    """
    h, w = image.shape[:2]
    if h != w:
        raise ValueError(f"augment.apply expects a square image, got {w}x{h}")
    params = params or _IDENTITY
    K = np.asarray(K, dtype=np.float64)
    if params.jitter is not None:
        image = color_jitter(image, params.jitter)
    A, K_out, xyz_out = geometry(params, K, xyz, w, size_out)
    if size_out == w and np.abs(A - _EYE).max() <= 1e-12:
        out = _planes(image) if chw else np.ascontiguousarray(image)
    else:
        out = _warp(image, A, size_out, chw)
    return out, K_out, xyz_out


def _warp(image: np.ndarray, A: np.ndarray, size_out: int, chw: bool = False) -> np.ndarray:
    """One bilinear warp into a black S x S canvas, anti-aliased when it shrinks the image."""
    sigma = antialias_sigma(A)
    if sigma > 0.0:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)
    rgb = image.ndim == 3 and image.shape[2] == 3
    if rgb:
        # OpenCV's bilinear warp is ~1.7x faster on 4-channel uint8 than on 3 (benchmarks/bench_input.py);
        # the RGB planes of the output are bit-identical, and the alpha plane is dropped below.
        image = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA)
    out = cv2.warpAffine(image, A[:2], (size_out, size_out), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    if chw:
        planes = _planes(out)
        return planes[:3] if rgb else planes
    return cv2.cvtColor(out, cv2.COLOR_RGBA2RGB) if rgb else out


def _planes(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> contiguous (C, H, W): cv2.split writes each plane into a slice of one buffer, about
    3x faster than NumPy's transposing copy. The first C' planes of the result are themselves contiguous."""
    if image.ndim == 2:
        return image[None].copy()
    out = np.empty((image.shape[2], *image.shape[:2]), dtype=image.dtype)
    planes = cv2.split(image, list(out))
    if planes[0].ctypes.data != out.ctypes.data:  # an OpenCV that allocated instead of writing in place
        out = np.stack(planes)
    return out


def color_jitter(image: np.ndarray, jitter: tuple[float, float, float, float]) -> np.ndarray:
    """Brightness, contrast, saturation and hue deltas applied as one 3x4 colour matrix (uint8 in and out).

    brightness b: x * (1 + b); contrast c: blend towards the image's mean grey by factor 1 + c; saturation
    s: blend towards each pixel's grey by factor 1 + s; hue h (fraction of the circle): rotation of the
    colour about the grey axis by 2 pi h, which keeps greys grey. All four are linear in RGB, so they
    compose into one matrix and one saturating `cv2.transform` pass.
    """
    M, pull = jitter_matrix(jitter)
    mean_grey = float(np.dot(cv2.mean(image)[:3], LUMA))
    return cv2.transform(image, np.hstack([M, np.full((3, 1), pull * mean_grey)]).astype(np.float32))


def jitter_matrix(jitter: tuple[float, float, float, float]) -> tuple[np.ndarray, float]:
    """(M, pull): the jittered pixel is M @ rgb + pull * (the input's mean grey), saturated to uint8.

    Contrast pulls towards the mean grey of the brightened image; saturation and hue keep grey fixed.
    """
    b, c, s, h = (float(v) for v in jitter)
    saturation = (1.0 + s) * np.eye(3) - s * np.outer(np.ones(3), LUMA)
    M = _hue_rotation(2.0 * np.pi * h) @ saturation * ((1.0 + c) * (1.0 + b))
    return M, -c * (1.0 + b)
def _hue_rotation(phi: float) -> np.ndarray:
    """Rotation of RGB space by phi about the grey axis (1, 1, 1) (Rodrigues' formula)."""
    k = np.ones(3) / np.sqrt(3.0)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.cos(phi) * np.eye(3) + np.sin(phi) * cross + (1.0 - np.cos(phi)) * np.outer(k, k)
