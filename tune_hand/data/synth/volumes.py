"""The hand as the renderer draws it: round cones and ellipsoids around the skeleton, with part labels.

Tips are points on the end of the finger's volume, every other joint lies inside it, as
MANO's joints do (`hand_model`). The labels tell the renderer what is hand (the mask),
forearm and sleeve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hand_model import FINGER_JOINTS, HandPose, HandShape, _unit, forearm_direction

# Volume part labels: the hand mask is every label below FOREARM.
PALM, THUMB, INDEX, MIDDLE, RING, LITTLE, FOREARM, SLEEVE = range(8)


@dataclass
class Volumes:
    """The hand as round cones (two spheres and their tangent cone) and ellipsoids."""

    cone_ends: np.ndarray    # (C, 2, 3)
    cone_radii: np.ndarray   # (C, 2)
    cone_labels: np.ndarray  # (C,)
    ell_centres: np.ndarray  # (E, 3)
    ell_axes: np.ndarray     # (E, 3, 3) columns: the ellipsoid's axes
    ell_radii: np.ndarray    # (E, 3) semi-axes
    ell_labels: np.ndarray   # (E,)

    def transformed(self, R: np.ndarray, t: np.ndarray) -> "Volumes":
        """The same volumes after x -> R x + t (hand frame -> camera frame)."""
        return Volumes(self.cone_ends @ R.T + t, self.cone_radii, self.cone_labels,
                       self.ell_centres @ R.T + t, R @ self.ell_axes, self.ell_radii, self.ell_labels)


# -- volumes ---------------------------------------------------------------------------------
def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation taking unit vector a onto unit vector b (Rodrigues; a != -b)."""
    v, c = np.cross(a, b), a @ b
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def hand_volumes(shape: HandShape, pose: HandPose, j: np.ndarray, sleeve_at: float | None = None) -> Volumes:
    """Round cones for the phalanges, metacarpals and forearm; ellipsoids for palm and wrist.

    The distal cone stops half a tip radius short of the tip joint, so the tip keypoint sits
    just inside the end of the finger. `sleeve_at` (metres from the wrist) adds a sleeve.
    """
    s = shape.size
    ends, radii, labels = [], [], []

    def cone(a, b, ra, rb, label):
        ends.append((a, b))
        radii.append((ra, rb))
        labels.append(label)

    for f, idx in enumerate(FINGER_JOINTS):
        r = shape.thumb_radius if f == 0 else shape.finger_radius[f - 1]
        tip_end = j[idx[3]] - 0.5 * r[3] * _unit(j[idx[3]] - j[idx[2]])
        pts = [j[idx[0]], j[idx[1]], j[idx[2]], tip_end]
        for k in range(3):
            cone(pts[k], pts[k + 1], r[k], r[k + 1], THUMB + f)
    # metacarpals: from the carpus to each knuckle, a rounded slab with knuckle bumps
    bases = np.array([[0.013, 0.016, 0.0], [0.004, 0.018, 0.0], [-0.007, 0.018, 0.0], [-0.017, 0.016, 0.0]]) * s
    for f in range(4):
        mcp = j[FINGER_JOINTS[f + 1][0]]
        base = bases[f] + [0.0, 0.0, 0.4 * mcp[2]]  # follows a cupped knuckle part of the way
        cone(base, mcp, 0.0125 * s, shape.finger_radius[f, 0] * 1.12, PALM)
    arm = forearm_direction(pose)
    side = _unit(np.cross(arm, [0.0, 0.0, 1.0]) if abs(arm[2]) < 0.95 else np.array([1.0, 0.0, 0.0]))
    start = 0.012 * s * arm  # the forearm begins just proximal of the wrist joint
    for sign in (1.0, -1.0):  # radius and ulna side by side: a forearm wider than it is thick
        a = start + sign * 0.007 * s * side
        cone(a, a + 0.30 * arm, 0.018 * s, 0.026 * s, FOREARM)
    if sleeve_at is not None:
        cone(sleeve_at * arm, (sleeve_at + 0.3) * arm, 0.032 * s, 0.04 * s, SLEEVE)

    cmc = j[1]
    palm_axes = np.eye(3)
    e_centres = [np.array([-0.002, 0.050, 0.002 + 0.004 * pose.cup]) * s,   # palm: pad and back
                 np.array([0.0, 0.008, 0.0]) * s,                           # carpus / wrist
                 cmc + 0.5 * (j[2] - cmc) + np.array([-0.006, 0.0, -0.002]) * s]  # thenar eminence
    thenar_axes = _rotation_between(np.array([0.0, 1.0, 0.0]), _unit(j[2] - cmc))
    e_axes = [palm_axes, palm_axes, thenar_axes]
    thenar_length = 0.5 * np.linalg.norm(j[2] - cmc) + 0.008 * s
    e_radii = [np.array([0.040, 0.042, 0.0148]) * s, np.array([0.028, 0.022, 0.0155]) * s,
               np.array([0.015 * s, thenar_length, 0.013 * s])]
    return Volumes(np.array(ends, dtype=float), np.array(radii, dtype=float), np.array(labels),
                   np.array(e_centres), np.array(e_axes), np.array(e_radii), np.array([PALM, PALM, THUMB]))


def surface_points(vol: Volumes, rng: np.random.Generator, n: int = 778) -> np.ndarray:
    """(n, 3) points on the surfaces of the hand's volumes (not forearm or sleeve), by area.

    Stands in for FreiHAND's 778 MANO vertices; points where volumes overlap may lie inside.
    """
    cones = np.flatnonzero(vol.cone_labels < FOREARM)
    ells = np.flatnonzero(vol.ell_labels < FOREARM)
    lengths = np.linalg.norm(vol.cone_ends[cones, 1] - vol.cone_ends[cones, 0], axis=1)
    cone_area = np.pi * vol.cone_radii[cones].sum(1) * lengths
    a, b, c = vol.ell_radii[ells].T
    p = 1.6
    ell_area = 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    area = np.r_[cone_area, ell_area]
    which = rng.choice(len(area), size=n, p=area / area.sum())
    out = np.empty((n, 3))
    is_cone = which < len(cones)
    ci = cones[which[is_cone]]
    t = rng.random(len(ci))[:, None]
    a0, a1 = vol.cone_ends[ci, 0], vol.cone_ends[ci, 1]
    axis = _unit(a1 - a0)
    e1 = _unit(np.cross(axis, np.where(np.abs(axis[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])))
    e2 = np.cross(axis, e1)
    ang = rng.uniform(0, 2 * np.pi, len(ci))[:, None]
    r = vol.cone_radii[ci, 0:1] * (1 - t) + vol.cone_radii[ci, 1:2] * t
    out[is_cone] = a0 + t * (a1 - a0) + r * (np.cos(ang) * e1 + np.sin(ang) * e2)
    ei = ells[which[~is_cone] - len(cones)]
    u = _unit(rng.normal(size=(len(ei), 3)))
    out[~is_cone] = vol.ell_centres[ei] + np.einsum("nij,nj->ni", vol.ell_axes[ei], u * vol.ell_radii[ei])
    return out
