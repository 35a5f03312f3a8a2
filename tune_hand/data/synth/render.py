"""One sample: ray-cast the posed hand, shade it once, and composite its colour versions.

The hand is ray-cast as shaded volumes (round cones and ellipsoids, per-pixel depth buffer,
so occlusion is exact) at SUPERSAMPLE times the resolution, then downsampled (anti-aliasing)
and composited over a background from `scene`. The depth buffer and shading are computed
once per sample; the colour versions differ only in skin tint, treatment and background.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...geometry import project, resize_affine
from . import hand_model as hm
from . import volumes as hv
from .scene import _background, _orientation, _rgb, _scale, _skin, _tint, _treatment, place_hand

SUPERSAMPLE = 2
TRAIN_VERSIONS = 4


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
    label: np.ndarray         # (S*2, S*2) int8 volumes part label of that surface, -1 none
    family: str               # the pose family drawn


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


def _primitives(vol: hv.Volumes) -> list:
    return ([_RoundCone(a, b, ra, rb, lab) for (a, b), (ra, rb), lab in
             zip(vol.cone_ends, vol.cone_radii, vol.cone_labels)]
            + [_Ellipsoid(c, ax, r, lab) for c, ax, r, lab in
               zip(vol.ell_centres, vol.ell_axes, vol.ell_radii, vol.ell_labels)])


@dataclass
class Buffers:
    depth: np.ndarray   # (H, W) float32 z of the nearest surface, inf = background
    label: np.ndarray   # (H, W) int8 part label of that surface, -1 = background
    normal: np.ndarray  # (3, H, W) float32 unit normal there (facing the camera), 0 = background


def raycast(vol: hv.Volumes, K: np.ndarray, size: int) -> Buffers:
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


def _downsample(img: np.ndarray, size: int) -> np.ndarray:
    """Box-filter a supersampled buffer to `size` (the area average: anti-aliasing)."""
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


# -- the sample ----------------------------------------------------------------------------------
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
    vol = hv.hand_volumes(shape, pose, j, sleeve_at=sleeve).transformed(R, t)
    xyz = j @ R.T + t
    verts = hv.surface_points(vol, rng)

    Kss = resize_affine(image_size, image_size * SUPERSAMPLE) @ K
    buf = raycast(vol, Kss, image_size * SUPERSAMPLE)
    shade = _shading(rng, buf)
    # Premultiplied light of the skin and of the sleeve at the output size: each colour
    # version is then a few multiply-adds (skin and cloth albedos differ per version).
    hit = buf.label >= 0
    skin_light = _rgb(_downsample(shade * (hit & (buf.label < hv.SLEEVE)), image_size))
    cloth_light = _rgb(_downsample(shade * (buf.label == hv.SLEEVE), image_size))
    clear = _rgb(1.0 - _downsample(hit.astype(np.float32), image_size))
    mask = _downsample(((buf.label >= 0) & (buf.label < hv.FOREARM)).astype(np.float32), image_size)
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
