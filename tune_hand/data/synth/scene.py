"""The scene around the hand: camera placement and the colours of each version.

The camera (`place_hand`) decides how big and how deep the hand is; the colour
functions draw the skin tone, its tint per colour version, the textured (or green
screen) background and the final colour treatment, all from the sample's RNG.
"""

from __future__ import annotations

import colorsys
import functools

import cv2
import numpy as np

from ...geometry import project

FOCAL_RANGE = (430.0, 670.0)   # px at 224; scales with the image size
FILL_RANGE = (0.5, 0.78)       # keypoint bounding box / image size, before depth clipping
DEPTH_RANGE = (0.4, 1.0)       # wrist depth, metres
_SKIN_TONES = np.array([[255, 219, 190], [241, 194, 160], [224, 172, 130], [198, 140, 100],
                        [160, 105, 70], [120, 78, 52], [92, 60, 42]], dtype=float)


# -- camera -----------------------------------------------------------------------------------
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform over SO(3) (from a normalised Gaussian quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _orientation(rng: np.random.Generator, arm_dir: np.ndarray) -> np.ndarray:
    """Any orientation (palm towards or away, any roll) whose forearm does not point at the camera."""
    while True:
        R = random_rotation(rng)
        if (R @ arm_dir)[2] > -0.35:
            return R


def place_hand(rng: np.random.Generator, rotated: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Translation t and intrinsics K that centre a hand (rotated joints, wrist at 0) in the crop.

    The focal length is drawn independently of depth, and depth follows from how much of the
    crop the hand fills: so a nearer hand looks bigger and the image carries the depth cue.
    """
    lo, hi = rotated.min(0), rotated.max(0)
    extent = max(hi[0] - lo[0], hi[1] - lo[1])
    for _ in range(20):
        f = rng.uniform(*FOCAL_RANGE) * size / 224.0
        fy = f * rng.uniform(0.98, 1.02)
        z = f * extent / (rng.uniform(*FILL_RANGE) * size) - 0.5 * (lo[2] + hi[2])
        t = np.array([0.0, 0.0, np.clip(z, *DEPTH_RANGE)])  # rotated[0] is the wrist: t[2] is its depth
        K = np.array([[f, 0.0, (size - 1) / 2], [0.0, fy, (size - 1) / 2], [0.0, 0.0, 1.0]])
        for _ in range(3):  # move the 2D box centre onto the principal point, depth unchanged
            uv = project(K, rotated + t)
            centre = 0.5 * (uv.min(0) + uv.max(0)) - K[:2, 2]
            t[:2] -= centre * (t[2] + 0.5 * (lo[2] + hi[2])) / np.array([f, fy])
        K[:2, 2] += rng.uniform(-4, 4, 2) * size / 224.0
        uv = project(K, rotated + t)
        if uv.min() >= 0.06 * size and uv.max() <= 0.94 * (size - 1):
            return t, K
    raise RuntimeError("could not fit the hand into the crop")  # not reached for sane shapes


# -- colour -----------------------------------------------------------------------------------
def _skin(rng: np.random.Generator) -> np.ndarray:
    """A skin tone (RGB 0..255) between two neighbouring tones of a light-to-dark palette."""
    i = rng.uniform(0, len(_SKIN_TONES) - 1)
    k = int(i)
    return _SKIN_TONES[k] + (i - k) * (_SKIN_TONES[min(k + 1, len(_SKIN_TONES) - 1)] - _SKIN_TONES[k])


def _tint(rgb: np.ndarray, rng: np.random.Generator, hue: float, sat: tuple, val: tuple) -> np.ndarray:
    h, s, v = colorsys.rgb_to_hsv(*(np.clip(rgb, 0, 255) / 255.0))
    h = (h + rng.uniform(-hue, hue)) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, np.clip(s * rng.uniform(*sat), 0, 1),
                                        np.clip(v * rng.uniform(*val), 0, 1))) * 255.0


def _colours(rng: np.random.Generator, n: int, avoid: np.ndarray, min_dist: float = 90.0) -> np.ndarray:
    """n random RGB colours at least `min_dist` from `avoid`, so the hand stays visible."""
    c = rng.uniform(0, 255, (8 * n + 8, 3))
    far = c[np.linalg.norm(c - avoid, axis=1) >= min_dist]
    return far[:n] if len(far) >= n else np.vstack([far, 255.0 - np.repeat(avoid[None], n - len(far), 0)])


@functools.lru_cache(maxsize=4)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


@functools.lru_cache(maxsize=4)
def _grain_bank(size: int) -> np.ndarray:
    """A fixed tile of Gaussian noise; backgrounds take random crops of it (drawing fresh
    noise for every image cost more than the rest of the background)."""
    n = max(2 * size, 512)
    return np.random.default_rng(20240611).standard_normal((n, n, 3), dtype=np.float32)


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    bank = _grain_bank(size)
    y, x = rng.integers(0, len(bank) - size, 2)
    return bank[y:y + size, x:x + size][:: rng.choice([-1, 1])]


def _rgb(x: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) by repeating the plane (cv2.merge: much faster than NumPy broadcasting)."""
    return cv2.merge([x, x, x])


def _scale(img: np.ndarray, rgb) -> np.ndarray:
    """Multiply each channel of a float32 (H, W, 3) image by rgb[channel]."""
    return cv2.multiply(img, (float(rgb[0]), float(rgb[1]), float(rgb[2]), 0.0))


def _background(rng: np.random.Generator, size: int, skin: np.ndarray, studio: bool = False) -> np.ndarray:
    """A textured float32 RGB background: gradient, blobs, stripes, low-frequency noise or clutter."""
    yy, xx = _unit_grid(size)
    if studio:  # a green screen: uneven green with a soft gradient
        g = np.array([rng.uniform(20, 90), rng.uniform(110, 200), rng.uniform(30, 100)])
        ramp = 1.0 + rng.uniform(-0.25, 0.25) * (xx - 0.5) + rng.uniform(-0.25, 0.25) * (yy - 0.5)
        return _scale(_rgb(ramp), g) + 3.0 * _grain(rng, size)
    c = _colours(rng, 6, skin)
    ang = rng.uniform(0, np.pi)
    ramp = np.clip(np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5) + 0.5, 0, 1)
    img = cv2.add(_scale(_rgb(ramp), c[1] - c[0]), (*c[0], 0.0))
    kind = rng.integers(4)
    if kind == 0:  # low-frequency colour noise
        k = int(rng.integers(2, 9))
        grid = _colours(rng, k * k, skin).reshape(k, k, 3).astype(np.float32)
        img = 0.4 * img + 0.6 * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # stripes or a checkerboard
        period = rng.uniform(0.04, 0.3)
        wave = np.sin((2 * np.pi / period) * (np.cos(ang) * xx + np.sin(ang) * yy))
        if rng.random() < 0.3:
            wave = wave * np.sin((2 * np.pi / period) * (np.cos(ang) * yy - np.sin(ang) * xx))
        on = _rgb((wave > 0).astype(np.float32))
        img = img * on + _scale(1.0 - on, c[2])
    else:  # blobs, boxes and lines: clutter
        for _ in range(int(rng.integers(4, 14))):
            col = tuple(float(v) for v in c[rng.integers(2, 6)])
            p = tuple(int(v) for v in rng.integers(0, size, 2))
            r = int(rng.integers(size // 20, size // 4))
            shape = rng.integers(3)
            if shape == 0:
                cv2.circle(img, p, r, col, -1, cv2.LINE_AA)
            elif shape == 1:
                cv2.rectangle(img, p, (p[0] + r, p[1] + int(rng.integers(r // 2, 2 * r))), col, -1)
            else:
                q = tuple(int(v) for v in rng.integers(0, size, 2))
                cv2.line(img, p, q, col, int(rng.integers(1, 6)), cv2.LINE_AA)
    sigma = rng.uniform(0.0, 2.5)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    return img + rng.uniform(1, 6) * _grain(rng, size)


def _treatment(rng: np.random.Generator) -> np.ndarray:
    """Per-channel 256-entry lookup table: contrast, brightness, white balance and gamma."""
    x = np.arange(256, dtype=np.float32) / 255.0
    contrast, bright, gamma = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08), rng.uniform(0.85, 1.15)
    gains = rng.uniform(0.92, 1.08, 3)
    y = np.clip((x - 0.5) * contrast + 0.5 + bright, 0, 1) ** gamma
    return np.clip(np.stack([y * g for g in gains], 1) * 255 + 0.5, 0, 255).astype(np.uint8)[:, None, :]
