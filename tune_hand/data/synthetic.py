"""Synthetic FreiHAND: a procedural hand renderer that writes the official layout.

FreiHAND cannot be downloaded on the project's machines, so the demo, the tests and the
benchmarks run on this. Each unique sample is a random right hand (`hand_model`: size,
bone lengths, one of several pose families) under a random 3D orientation, 0.4-1.0 m
from a camera whose intrinsics K are realistic for a 224 px crop (fx ~ 430-670 px). The
hand is ray-cast as shaded volumes (round cones and ellipsoids, per-pixel depth buffer,
so occlusion is exact) at twice the resolution, then downsampled (anti-aliasing) and
composited over a textured background. The depth buffer and shading are computed once per
sample; the 4 training colour versions differ in skin tint, colour treatment and
background, as FreiHAND's do (version 0 is a green-screen studio shot).

Conventions (tune_hand.geometry): uv = (K @ xyz)[:2] / z with OpenCV pixel centres, so
the ray through the centre of column c, row r is K^-1 @ (c, r, 1), and every keypoint
written projects exactly where its joint was drawn.
"""

from __future__ import annotations

import colorsys
import contextlib
import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import DataError, TuneHandError
from ..geometry import project, resize_affine
from ..io import atomic_directory, atomic_write_bytes
from . import hand_model as hm

SUPERSAMPLE = 2
JPEG_QUALITY = 90
TRAIN_VERSIONS = 4
SPLITS = {"training": 0, "evaluation": 1}
FOCAL_RANGE = (430.0, 670.0)   # px at 224; scales with the image size
FILL_RANGE = (0.5, 0.78)       # keypoint bounding box / image size, before depth clipping
DEPTH_RANGE = (0.4, 1.0)       # wrist depth, metres
_SKIN_TONES = np.array([[255, 219, 190], [241, 194, 160], [224, 172, 130], [198, 140, 100],
                        [160, 105, 70], [120, 78, 52], [92, 60, 42]], dtype=float)


@dataclass
class Sample:
    """One rendered unique sample: the colour versions share everything else."""

    images: list[np.ndarray]  # RGB uint8 (S, S, 3), one per colour version
    mask: np.ndarray          # uint8 (S, S), 0 or 255: hand pixels (forearm and sleeve excluded)
    K: np.ndarray             # (3, 3)
    xyz: np.ndarray           # (21, 3) metres, camera frame
    scale: float              # length of bone 9 -> 10 (middle finger MCP -> PIP), metres
    verts: np.ndarray         # (778, 3) points on the hand's surface, metres, camera frame
    depth: np.ndarray         # (S*2, S*2) float32 z of the nearest surface, inf where none
    label: np.ndarray         # (S*2, S*2) int8 hand_model part label of that surface, -1 none
    family: str               # the pose family drawn


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


# -- ray casting ------------------------------------------------------------------------------
def _box(corners: np.ndarray, K: np.ndarray, size: int) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1), end exclusive, holding the projection of 3D corner points."""
    if corners[:, 2].min() <= 1e-3:
        return 0, 0, size, size
    uv = project(K, corners)
    x0, y0 = np.floor(uv.min(0)).astype(int) - 1
    x1, y1 = np.ceil(uv.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _ray_grid(K: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rx, ry), each (size, size) float32: the ray K^-1 (c, r, 1) = (rx, ry, 1) of every pixel
    centre (K's last row is (0, 0, 1), so the ray's z is 1 and depth is distance along it)."""
    Kinv = np.linalg.inv(K)
    u = np.arange(size, dtype=np.float64)[None, :]
    v = np.arange(size, dtype=np.float64)[:, None]
    rx = (Kinv[0, 0] * u + Kinv[0, 1] * v + Kinv[0, 2]).astype(np.float32)
    ry = np.broadcast_to(Kinv[1, 1] * v + Kinv[1, 2], (size, size)).astype(np.float32)
    return rx, ry


def _dot(d, v) -> np.ndarray:
    """Per-ray dot product of ray planes d = (dx, dy, dz) with a constant vector (float32 kept)."""
    return d[0] * float(v[0]) + d[1] * float(v[1]) + d[2] * float(v[2])


class _RoundCone:
    """Convex hull of two spheres (a capsule with a taper): a phalanx, a metacarpal, a forearm bone."""

    def __init__(self, pa, pb, ra, rb, label):
        self.pa, self.pb, self.ra, self.rb, self.label = pa, pb, float(ra), float(rb), label
        self.ba = pb - pa
        self.rr = self.ra - self.rb
        self.d2 = float(self.ba @ self.ba) - self.rr**2

    def corners(self) -> np.ndarray:
        return np.concatenate([self.pa + self.ra * _CUBE, self.pb + self.rb * _CUBE])

    def distance(self, d) -> np.ndarray:
        """Distance along unit rays d (from the origin) to the surface; inf = miss.

        Inigo Quilez's round-cone intersection, vectorised. Per-ray terms stay float32
        (scalars are Python floats, so NumPy does not upcast); constants are float64.
        """
        pa, pb, ra, rb, rr, d2 = self.pa, self.pb, self.ra, self.rb, self.rr, self.d2
        m0, m1, m5, m7 = float(self.ba @ self.ba), float(-self.ba @ pa), float(pa @ pa), float(pb @ pb)
        m2, m3, m6 = _dot(d, self.ba), -_dot(d, pa), -_dot(d, pb)
        k2 = d2 - m2 * m2
        k1 = d2 * m3 + m2 * (rr * ra - m1)
        k0 = d2 * m5 - m1 * m1 + 2.0 * m1 * rr * ra - m0 * ra * ra
        h = k1 * k1 - k0 * k2
        t = (-np.sqrt(np.maximum(h, 0)) - k1) / k2
        y = (m1 - ra * rr) + t * m2
        body = (h >= 0) & (y > 0) & (y < d2)
        h1 = m3 * m3 - (m5 - ra * ra)
        h2 = m6 * m6 - (m7 - rb * rb)
        t1 = np.where(h1 > 0, -m3 - np.sqrt(np.maximum(h1, 0)), np.inf)
        t2 = np.where(h2 > 0, -m6 - np.sqrt(np.maximum(h2, 0)), np.inf)
        return np.where(body, t, np.where(h >= 0, np.minimum(t1, t2), np.inf))

    def normal(self, p) -> list[np.ndarray]:
        """Outward normals (unnormalised) at surface points p = (px, py, pz)."""
        pp = [p[k] - float(self.pa[k]) for k in range(3)]
        y = _dot(pp, self.ba) - self.ra * self.rr  # <= 0: on sphere a, >= d2: on sphere b
        return [np.where(y <= 0, pp[k], np.where(y >= self.d2, p[k] - float(self.pb[k]),
                                                 self.d2 * pp[k] - float(self.ba[k]) * y)) for k in range(3)]


class _Ellipsoid:
    """An ellipsoid (centre, axes as matrix columns, semi-axes): the palm pad, carpus, thenar."""

    def __init__(self, centre, axes, radii, label):
        self.c, self.axes, self.radii, self.label = centre, axes, radii, label

    def corners(self) -> np.ndarray:
        return self.c + np.sqrt(((self.axes * self.radii) ** 2).sum(1)) * _CUBE

    def distance(self, d) -> np.ndarray:
        o = (self.axes.T @ -self.c) / self.radii
        dl = [_dot(d, self.axes[:, k]) / float(self.radii[k]) for k in range(3)]
        a = dl[0] * dl[0] + dl[1] * dl[1] + dl[2] * dl[2]
        b = _dot(dl, o)
        h = b * b - a * float(o @ o - 1.0)
        return np.where(h >= 0, (-b - np.sqrt(np.maximum(h, 0))) / a, np.inf)

    def normal(self, p) -> list[np.ndarray]:
        q = [_dot([p[i] - float(self.c[i]) for i in range(3)], self.axes[:, k]) / float(self.radii[k]) ** 2
             for k in range(3)]
        return [_dot(q, self.axes[i]) for i in range(3)]


def _primitives(vol: hm.Volumes) -> list:
    return ([_RoundCone(a, b, ra, rb, lab) for (a, b), (ra, rb), lab in
             zip(vol.cone_ends, vol.cone_radii, vol.cone_labels)]
            + [_Ellipsoid(c, ax, r, lab) for c, ax, r, lab in
               zip(vol.ell_centres, vol.ell_axes, vol.ell_radii, vol.ell_labels)])


@dataclass
class Buffers:
    depth: np.ndarray   # (H, W) float32 z of the nearest surface, inf = background
    label: np.ndarray   # (H, W) int8 part label of that surface, -1 = background
    normal: np.ndarray  # (3, H, W) float32 unit normal there (facing the camera), 0 = background


def raycast(vol: hm.Volumes, K: np.ndarray, size: int) -> Buffers:
    """Depth, part label and normal buffers of camera-frame volumes, one ray per pixel centre.

    Each volume is intersected only inside its projected bounding box and a pixel keeps the
    nearest hit (a depth buffer), so occlusion is exact whatever the order of the volumes.
    Normals are computed afterwards, for each volume only where it is the visible one.
    """
    rx, ry = _ray_grid(K, size)
    dz = 1.0 / np.sqrt(rx * rx + ry * ry + 1.0)
    unit = (rx * dz, ry * dz, dz)
    depth = np.full((size, size), np.inf, np.float32)
    owner = np.full((size, size), -1, np.int16)
    prims = _primitives(vol)
    boxes = [_box(prim.corners(), K, size) for prim in prims]
    for i, (prim, box) in enumerate(zip(prims, boxes)):
        if box is None:
            continue
        sl = np.s_[box[1]:box[3], box[0]:box[2]]
        with np.errstate(invalid="ignore", divide="ignore"):  # rays grazing a cone's side
            z = prim.distance([u[sl] for u in unit]) * dz[sl]
        nearer = (z < depth[sl]) & (z > 0)
        np.copyto(depth[sl], z, where=nearer)
        owner[sl][nearer] = i
    normal = np.zeros((3, size, size), np.float32)
    label = np.full((size, size), -1, np.int8)
    for i, (prim, box) in enumerate(zip(prims, boxes)):
        if box is None:
            continue
        sl = np.s_[box[1]:box[3], box[0]:box[2]]
        mine = owner[sl] == i
        if not mine.any():
            continue
        z = depth[sl][mine]
        n = prim.normal([rx[sl][mine] * z, ry[sl][mine] * z, z])
        inv = 1.0 / np.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2)
        for k in range(3):
            normal[k][sl][mine] = n[k] * inv
        label[sl][mine] = prim.label
    return Buffers(depth, label, normal)


_CUBE = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)


# -- shading and colour ---------------------------------------------------------------------
def _shading(rng: np.random.Generator, buf: Buffers) -> np.ndarray:
    """Per-pixel light intensity: ambient + Lambert + a little specular, darkened in crevices.

    The crevice term (depth minus the local minimum depth) gives contact shadows where a
    finger lies on the palm or on another finger, so overlapping parts stay distinguishable.
    """
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.4, 1.5)])
    light /= np.linalg.norm(light)
    half = light + np.array([0.0, 0.0, -1.0])
    ambient, gloss = rng.uniform(0.3, 0.5), rng.uniform(0.0, 0.15)
    lam = np.maximum(_dot(buf.normal, light), 0)
    spec = np.maximum(_dot(buf.normal, half / np.linalg.norm(half)), 0) ** 24
    hit = buf.label >= 0
    z = np.where(hit, buf.depth, np.float32(100.0))
    near = cv2.erode(z, _DISK)
    crevice = cv2.blur(np.minimum((z - near) * 50.0, 1.0), (5, 5))
    return (ambient + (1.05 - ambient) * lam + gloss * spec) * (1.0 - 0.45 * crevice) * hit


_DISK = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))


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


def _downsample(img: np.ndarray, size: int) -> np.ndarray:
    """Box-filter a supersampled buffer to `size` (the area average: anti-aliasing)."""
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


# -- samples ----------------------------------------------------------------------------------
def render_sample(rng: np.random.Generator, image_size: int = 224, versions: int = TRAIN_VERSIONS,
                  studio_first: bool = True) -> Sample:
    """Draw a hand, pose it in front of the camera and render `versions` colour versions.

    With `studio_first` version 0 is a green-screen shot (FreiHAND's first version);
    the others, and all versions otherwise, have textured backgrounds.
    """
    shape, pose = hm.sample_hand(rng)
    j = hm.joints(shape, pose)
    R = _orientation(rng, hm.forearm_direction(pose))
    t, K = place_hand(rng, j @ R.T, image_size)
    sleeve = rng.uniform(0.05, 0.15) if rng.random() < 0.5 else None
    vol = hm.hand_volumes(shape, pose, j, sleeve_at=sleeve).transformed(R, t)
    xyz = j @ R.T + t
    verts = hm.surface_points(vol, rng)

    Kss = resize_affine(image_size, image_size * SUPERSAMPLE) @ K
    buf = raycast(vol, Kss, image_size * SUPERSAMPLE)
    shade = _shading(rng, buf)
    # Premultiplied light of the skin and of the sleeve at the output size: each colour
    # version is then a few multiply-adds (skin and cloth albedos differ per version).
    hit = buf.label >= 0
    skin_light = _rgb(_downsample(shade * (hit & (buf.label < hm.SLEEVE)), image_size))
    cloth_light = _rgb(_downsample(shade * (buf.label == hm.SLEEVE), image_size))
    clear = _rgb(1.0 - _downsample(hit.astype(np.float32), image_size))
    mask = _downsample(((buf.label >= 0) & (buf.label < hm.FOREARM)).astype(np.float32), image_size)
    skin, cloth = _skin(rng), rng.uniform(10, 245, 3)
    images = []
    for v in range(versions):
        studio = studio_first and v == 0
        tone = skin if studio else _tint(skin, rng, 0.03, (0.8, 1.25), (0.8, 1.15))
        img = _scale(skin_light, tone) + _scale(cloth_light, cloth) + clear * _background(rng, image_size, tone, studio)
        images.append(cv2.LUT(cv2.convertScaleAbs(img), _treatment(rng)))  # rounds and saturates
    return Sample(images=images, mask=np.where(mask >= 0.5, 255, 0).astype(np.uint8), K=K, xyz=xyz,
                  scale=float(np.linalg.norm(xyz[10] - xyz[9])), verts=verts, depth=buf.depth,
                  label=buf.label, family=pose.family)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of one unique sample: the output does not depend on order or worker count."""
    return np.random.default_rng([seed, SPLITS[split], index])


# -- the dataset ------------------------------------------------------------------------------
def render_dataset(out: str | Path, n_train: int, n_eval: int, seed: int = 0, image_size: int = 224,
                   with_mesh_files: bool = True, overwrite: bool = False,
                   progress: Callable[[int, int], None] | None = None, workers: int = 1) -> dict:
    """Write a FreiHAND-layout dataset to `out`, atomically: nothing half-written on an error or Ctrl-C.

    Layout (DESIGN section 3), N = n_train, M = n_eval:
      training/rgb/%08d.jpg   4N images; image v*N + k is colour version v of sample k
      training/mask/%08d.jpg  N hand masks (0/255; forearm and sleeve excluded)
      training_{K,xyz,scale}.json, and with `with_mesh_files` training_mano.json (zeros, N x [1 x 61]:
        there is no MANO fit; ~250 B a sample) and training_verts.json (778 hand-surface points a
        sample, ~21 KB a sample: 21 MB for 1,000 samples)
      evaluation/rgb/%08d.jpg (M images, one version), evaluation_{K,xyz,scale}.json (+ mano/verts);
        with n_eval = 0 there is no evaluation split at all.
    Sample k of a split is drawn from its own RNG (seed, split, k): the same seed gives the same
    bytes whatever `workers` is. `workers` > 1 renders in that many processes.
    `progress(done, total)` is called after each unique sample, total = n_train + n_eval.

    Returns {"dir", "unique_samples" (n_train + n_eval), "train_images", "eval_images",
    "seconds", "images_per_s"}.
    """
    _check_args(out, n_train, n_eval, image_size, overwrite, workers)
    out = Path(out)
    total, done = n_train + n_eval, 0
    t0 = time.perf_counter()
    with atomic_directory(out, overwrite=overwrite) as tmp, _mapper(workers) as map_:
        for split, n in (("training", n_train), ("evaluation", n_eval)):
            if n == 0:
                continue
            (tmp / split / "rgb").mkdir(parents=True)
            if split == "training":
                (tmp / split / "mask").mkdir()
            ann: dict[str, list] = {"K": [], "xyz": [], "scale": [], "verts": []}
            jobs = [(seed, split, k, image_size) for k in range(n)]
            for k, (jpegs, mask, a) in enumerate(map_(_encoded_sample, jobs)):
                for v, jpeg in enumerate(jpegs):
                    (tmp / split / "rgb" / f"{v * n + k:08d}.jpg").write_bytes(jpeg)
                if mask is not None:
                    (tmp / split / "mask" / f"{k:08d}.jpg").write_bytes(mask)
                for key in ann:
                    ann[key].append(a[key])
                done += 1
                if progress is not None:
                    progress(done, total)
            for key in ("K", "xyz", "scale"):
                _dump(tmp / f"{split}_{key}.json", ann[key])
            if with_mesh_files:
                _dump(tmp / f"{split}_mano.json", [[[0.0] * 61] for _ in range(n)])
                _dump(tmp / f"{split}_verts.json", ann["verts"])
        os.chmod(tmp, (tmp / "training").stat().st_mode & 0o777)  # mkdtemp made it private (0700)
    seconds = time.perf_counter() - t0
    images = TRAIN_VERSIONS * n_train + n_eval
    return {"dir": str(out), "unique_samples": total, "train_images": TRAIN_VERSIONS * n_train,
            "eval_images": n_eval, "seconds": seconds, "images_per_s": images / max(seconds, 1e-9)}


def _encoded_sample(job: tuple) -> tuple[list[bytes], bytes | None, dict]:
    """Render unique sample `index` of `split` and encode it: JPEG bytes, mask bytes, annotations."""
    seed, split, index, image_size = job
    training = split == "training"
    s = render_sample(sample_rng(seed, split, index), image_size, TRAIN_VERSIONS if training else 1,
                      studio_first=training)
    jpegs = [_jpeg(cv2.cvtColor(img, cv2.COLOR_RGB2BGR)) for img in s.images]
    ann = {"K": s.K.tolist(), "xyz": s.xyz.tolist(), "scale": s.scale, "verts": np.round(s.verts, 5).tolist()}
    return jpegs, _jpeg(s.mask) if training else None, ann


@contextlib.contextmanager
def _mapper(workers: int):
    """An ordered map: the builtin, or a pool of `workers` spawned processes (torn down on any exit)."""
    if workers <= 1:
        yield map
        return
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,))
    try:
        yield lambda fn, jobs: pool.imap(fn, jobs, chunksize=4)
    finally:
        pool.terminate()
        pool.join()


def _check_args(out, n_train, n_eval, image_size, overwrite, workers) -> None:
    def is_int(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not is_int(n_train) or n_train < 1:
        raise TuneHandError(f"n_train={n_train!r}: need at least 1 unique training sample")
    if not is_int(n_eval) or n_eval < 0:
        raise TuneHandError(f"n_eval={n_eval!r}: need 0 or more evaluation samples")
    if not is_int(image_size) or image_size < 32:
        raise TuneHandError(f"image_size={image_size!r}: need an integer of at least 32 pixels")
    if not is_int(workers) or workers < 1:
        raise TuneHandError(f"workers={workers!r}: need at least 1 process")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TuneHandError(f"{out}: exists and is not a directory; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TuneHandError(f"{out}: already exists and is not empty; remove it, choose another path "
                            f"or pass overwrite=True (--overwrite)")


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _dump(path: Path, obj) -> None:
    """Compact JSON like the release's (indentation would triple the verts file)."""
    path.write_text(json.dumps(obj, separators=(",", ":")))


# -- preview ----------------------------------------------------------------------------------
def write_preview(data_dir: str | Path, out_png: str | Path, count: int = 16, split: str = "training") -> Path:
    """Contact sheet of `count` images of a FreiHAND-layout directory with keypoints drawn.

    Reads only what a loader reads (the JSON files and the JPEGs), so it checks the written
    layout end to end: the drawn skeleton lands on the hand only if K, xyz and the image agree.
    Images are spread evenly over the split, so training previews show every colour version.
    """
    from ..viz import contact_sheet, draw_skeleton

    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise TuneHandError(f"split={split!r}: expected one of {sorted(SPLITS)}")
    Ks = _load_json(data_dir / f"{split}_K.json")
    xyz_path = data_dir / f"{split}_xyz.json"
    xyz = _load_json(xyz_path) if xyz_path.exists() else None
    files = sorted((data_dir / split / "rgb").glob("*.jpg"))
    if not files:
        raise DataError(f"{data_dir / split / 'rgb'}: no images; is {data_dir} a FreiHAND-layout directory?")
    picks = np.unique(np.linspace(0, len(files) - 1, max(1, min(count, len(files)))).round().astype(int))
    tiles = []
    for i in picks:
        bgr = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"{files[i]}: unreadable image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        k = int(files[i].stem) % len(Ks)
        if xyz is not None:
            rgb = draw_skeleton(rgb, project(np.array(Ks[k]), np.array(xyz[k])))
        cv2.putText(rgb, str(int(files[i].stem)), (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(rgb)
    sheet = contact_sheet(tiles, cols=math.ceil(math.sqrt(len(tiles))))
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise TuneHandError(f"{out_png}: could not encode the preview")
    return atomic_write_bytes(out_png, png.tobytes())


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: missing; is {path.parent} a FreiHAND-layout directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
