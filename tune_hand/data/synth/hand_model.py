"""Kinematic hand for the synthetic renderer: skeleton and pose families (drawn as `volumes`).

Hand frame (a right hand, metres): origin at the wrist joint, +y distal (wrist towards the
middle finger), +x radial (towards the thumb), +z palmar (out of the palm). x, y, z is
right-handed, so any proper rotation of it is still a right hand, as in FreiHAND.

Joints follow FreiHAND: 0 wrist; 1-4 thumb (CMC, MCP, IP, tip); 5-8 index, 9-12 middle,
13-16 ring, 17-20 little (MCP, PIP, DIP, tip). Tips are points on the end of the finger's
volume, every other joint lies inside it, as MANO's joints do.

Why pose families: a constant mean hand shape scores 11.7 mm PA-MPJPE on a narrow pose set,
so a benchmark on such data says little. Mixing fists, pinches, pointing, counting, spread,
flat, relaxed and fully random hands makes the mean shape a poor predictor
(`pose_variety_mm`: about 22 mm on a few hundred poses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NUM_JOINTS = 21
FINGERS = ("thumb", "index", "middle", "ring", "little")
FINGER_JOINTS = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]]

# Nominal adult right hand (wrist to middle tip 0.188 m). Fingers: index, middle, ring, little.
_MCP = np.array([[0.028, 0.086, 0.0], [0.0065, 0.090, 0.0], [-0.0140, 0.085, 0.0], [-0.0325, 0.076, 0.0]])
_PHALANX = np.array([[0.041, 0.025, 0.022], [0.046, 0.029, 0.023],     # proximal, middle, distal
                     [0.043, 0.027, 0.023], [0.034, 0.020, 0.020]])    # (distal ends on the tip)
_FINGER_RADIUS = np.array([[0.0105, 0.0095, 0.0085, 0.0078], [0.0110, 0.0098, 0.0088, 0.0080],
                           [0.0103, 0.0093, 0.0083, 0.0076], [0.0092, 0.0082, 0.0074, 0.0068]])
_SPLAY = np.array([4.0, 0.0, -4.0, -9.0])      # rest in-plane angle of each finger, degrees
_SPREAD_GAIN = np.array([1.0, 0.15, -0.7, -1.25])  # how far each finger fans out per degree of spread
_CUP_Z = np.array([-0.001, 0.0, 0.005, 0.011])  # palmar shift of each MCP when the palm cups
_THUMB_CMC = np.array([0.026, 0.028, 0.008])
_THUMB_BONES = np.array([0.044, 0.033, 0.028])  # metacarpal, proximal, distal (to the tip)
_THUMB_RADIUS = np.array([0.0160, 0.0118, 0.0108, 0.0095])
_THUMB_FLEX_DIR = np.array([-0.8, -0.1, 0.6])  # towards the palm: where the thumb curls

# Joint limits, degrees. Fingers: MCP flexion, PIP, DIP; thumb: radial abduction alpha (in
# the palm plane, from +y towards +x), palmar abduction beta (out of it), MCP and IP flexion.
FINGER_LIMITS = np.array([[-20.0, 90.0], [0.0, 110.0], [0.0, 80.0]])
THUMB_LIMITS = np.array([[10.0, 75.0], [0.0, 75.0], [-10.0, 60.0], [-20.0, 80.0]])
ABDUCTION_LIMIT = 20.0

FAMILIES = ("fist", "pinch", "ok", "pointing", "counting", "spread", "flat", "relaxed", "random")
_FAMILY_WEIGHTS = np.array([0.13, 0.10, 0.07, 0.11, 0.16, 0.09, 0.09, 0.07, 0.18])


@dataclass
class HandShape:
    """One person's hand: bone lengths and radii (metres), already scaled and jittered."""

    mcp: np.ndarray          # (4, 3) finger MCP positions
    phalanx: np.ndarray      # (4, 3) finger bone lengths
    finger_radius: np.ndarray  # (4, 4) radius at MCP, PIP, DIP, tip
    thumb_cmc: np.ndarray    # (3,)
    thumb_bones: np.ndarray  # (3,)
    thumb_radius: np.ndarray  # (4,)
    size: float              # overall scale factor against the nominal hand


@dataclass
class HandPose:
    """Joint angles in degrees, plus which family drew them (for tests and previews)."""

    family: str
    flex: np.ndarray       # (4, 3) MCP, PIP, DIP flexion of index..little
    splay: np.ndarray      # (4,) in-plane finger angles (rest splay + abduction)
    thumb: np.ndarray      # (4,) alpha, beta, MCP flexion, IP flexion
    thumb_roll: float      # twist of the thumb's flexion plane about its metacarpal
    cup: float             # 0 flat palm .. 1 cupped (ring and little MCPs move palmar)
    wrist: np.ndarray      # (2,) forearm flexion and deviation relative to the hand


# -- sampling -------------------------------------------------------------------------------
def sample_shape(rng: np.random.Generator) -> HandShape:
    """A random adult hand: overall size +-15%, each bone +-7%, finger thickness +-10%."""
    size = rng.uniform(0.85, 1.15)
    width = rng.uniform(0.92, 1.08)
    thick = rng.uniform(0.9, 1.1)
    mcp = _MCP * [width, 1.0, 1.0] * rng.uniform(0.96, 1.04, (4, 1))
    return HandShape(mcp=mcp * size, phalanx=_PHALANX * rng.uniform(0.93, 1.07, (4, 3)) * size,
                     finger_radius=_FINGER_RADIUS * thick * size,
                     thumb_cmc=_THUMB_CMC * [width, 1.0, 1.0] * size,
                     thumb_bones=_THUMB_BONES * rng.uniform(0.93, 1.07, 3) * size,
                     thumb_radius=_THUMB_RADIUS * thick * size, size=size)


def sample_pose(rng: np.random.Generator, shape: HandShape, family: str | None = None) -> HandPose:
    """A pose from one of FAMILIES (drawn with fixed weights unless `family` is given)."""
    if family is None:
        family = FAMILIES[rng.choice(len(FAMILIES), p=_FAMILY_WEIGHTS)]
    curl, spread, thumb, target, cup = _FAMILY_SAMPLERS[family](rng)
    flex = _flex_from_curl(rng, curl, independent=family == "random")
    splay = (_SPLAY + _SPREAD_GAIN * spread) * (1.0 - 0.6 * np.clip(curl, 0, 1)) + rng.normal(0, 1.5, 4)
    splay = np.clip(splay, _SPLAY - ABDUCTION_LIMIT, _SPLAY + ABDUCTION_LIMIT)
    pose = HandPose(family=family, flex=flex, splay=splay, thumb=np.clip(thumb, *THUMB_LIMITS.T),
                    thumb_roll=rng.uniform(-15, 15), cup=cup,
                    wrist=np.array([rng.uniform(-45, 40), rng.uniform(-15, 15)]))
    if target is not None:  # a pinch: bend the thumb until its tip meets the target point
        pose.thumb = _thumb_ik(shape, pose, target(joints(shape, pose)))
    return pose


def sample_hand(rng: np.random.Generator, family: str | None = None) -> tuple[HandShape, HandPose]:
    """A random hand and a pose for it (the pose needs the shape: pinches are solved on it)."""
    shape = sample_shape(rng)
    return shape, sample_pose(rng, shape, family)


def sample_pose_joints(n: int, seed: int = 0) -> np.ndarray:
    """(n, 21, 3) hand-frame joints of n random hands: the pose distribution without rendering."""
    out = np.empty((n, NUM_JOINTS, 3))
    for i in range(n):  # stream 7: apart from the renderer's per-split streams
        shape, pose = sample_hand(np.random.default_rng([seed, 7, i]))
        out[i] = joints(shape, pose)
    return out


def _flex_from_curl(rng: np.random.Generator, curl: np.ndarray, independent: bool) -> np.ndarray:
    """MCP/PIP/DIP angles from a per-finger curl in [0, 1]; DIP follows PIP loosely."""
    if independent:
        mcp, pip = rng.uniform(-20, 90, 4), rng.uniform(0, 110, 4)
    else:
        mcp = curl * 85 * rng.uniform(0.8, 1.1, 4) + rng.normal(0, 6, 4)
        pip = curl * 100 * rng.uniform(0.8, 1.1, 4) + rng.normal(0, 6, 4)
    dip = pip * rng.uniform(0.45, 0.85, 4) + rng.normal(0, 5, 4)
    flex = np.stack([mcp, pip, dip], axis=1)
    return np.clip(flex, FINGER_LIMITS[:, 0], FINGER_LIMITS[:, 1])


# Each family returns (curl per finger, spread degrees, thumb angles, thumb-tip target or None, cup).
def _thumb_over_fingers(rng):
    return np.array([rng.uniform(8, 25), rng.uniform(35, 55), rng.uniform(25, 50), rng.uniform(25, 60)])


def _thumb_out(rng):
    return np.array([rng.uniform(45, 75), rng.uniform(0, 30), rng.uniform(-10, 20), rng.uniform(-20, 20)])


def _fist(rng):
    thumbs_up = rng.random() < 0.3
    thumb = np.array([rng.uniform(10, 25), rng.uniform(0, 20), rng.uniform(-5, 20), rng.uniform(-15, 20)]) \
        if thumbs_up else _thumb_over_fingers(rng)
    return rng.uniform(0.85, 1.05, 4), 0.0, thumb, None, rng.uniform(0.5, 1.0)


def _pinch(rng):
    finger = 1 + int(rng.random() < 0.35)  # 1 index (65%) or 2 middle
    curl = rng.uniform(0.0, 0.9, 4)
    curl[finger - 1] = rng.uniform(0.25, 0.6)
    thumb = np.array([40.0, 40.0, 20.0, 20.0])
    return curl, rng.uniform(0, 10), thumb, _tip_target(finger), rng.uniform(0.2, 0.8)


def _ok(rng):
    curl = np.r_[rng.uniform(0.4, 0.65), rng.uniform(0.0, 0.2, 3)]
    return curl, rng.uniform(5, 18), np.array([40.0, 40.0, 20.0, 30.0]), _tip_target(1), rng.uniform(0.1, 0.5)


def _pointing(rng):
    curl = np.r_[rng.uniform(0.0, 0.12), rng.uniform(0.8, 1.05, 3)]
    thumb = _thumb_out(rng) if rng.random() < 0.4 else _thumb_over_fingers(rng)
    return curl, 0.0, thumb, None, rng.uniform(0.3, 0.9)


_COUNTING = [(1, 0, 0, 0), (1, 1, 0, 0), (1, 1, 1, 0), (1, 1, 1, 1), (1, 0, 0, 1), (0, 0, 0, 1), (0, 1, 0, 0)]


def _counting(rng):
    up = np.array(_COUNTING[rng.integers(len(_COUNTING))], dtype=float)
    curl = np.where(up > 0, rng.uniform(0.0, 0.15, 4), rng.uniform(0.8, 1.05, 4))
    if rng.random() < 0.5:
        return curl, rng.uniform(5, 18), _thumb_out(rng), None, rng.uniform(0.2, 0.7)
    # thumb folded across the palm onto the base of the ring finger
    return curl, rng.uniform(5, 18), np.array([20.0, 50.0, 30.0, 30.0]), _palm_target(), rng.uniform(0.2, 0.7)


def _spread(rng):
    thumb = np.array([rng.uniform(55, 75), rng.uniform(0, 25), rng.uniform(-10, 15), rng.uniform(-20, 15)])
    return rng.uniform(-0.15, 0.15, 4), rng.uniform(12, 20), thumb, None, rng.uniform(0.0, 0.2)


def _flat(rng):
    thumb = np.array([rng.uniform(12, 35), rng.uniform(0, 20), rng.uniform(-10, 15), rng.uniform(-20, 15)])
    return rng.uniform(-0.2, 0.08, 4), rng.uniform(0, 5), thumb, None, rng.uniform(0.0, 0.2)


def _relaxed(rng):
    base, step = rng.uniform(0.1, 0.4), rng.uniform(0.03, 0.15)
    thumb = np.array([rng.uniform(25, 50), rng.uniform(20, 45), rng.uniform(5, 30), rng.uniform(5, 35)])
    return base + step * np.arange(4) + rng.normal(0, 0.05, 4), rng.uniform(3, 10), thumb, None, rng.uniform(0.3, 0.7)


def _random(rng):
    thumb = rng.uniform(THUMB_LIMITS[:, 0], THUMB_LIMITS[:, 1])
    return np.zeros(4), rng.uniform(0, 20), thumb, None, rng.uniform(0, 1)


def _tip_target(finger: int):
    tip = FINGER_JOINTS[finger][3]
    return lambda j: j[tip] + 0.004 * _unit(j[FINGER_JOINTS[0][0]] - j[tip])


def _palm_target():
    return lambda j: j[13] + np.array([0.0, -0.012, 0.024])


_FAMILY_SAMPLERS = {"fist": _fist, "pinch": _pinch, "ok": _ok, "pointing": _pointing, "counting": _counting,
                    "spread": _spread, "flat": _flat, "relaxed": _relaxed, "random": _random}


# -- kinematics -----------------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _finger_chain(base: np.ndarray, u: np.ndarray, n: np.ndarray, lengths: np.ndarray,
                  angles_deg: np.ndarray) -> np.ndarray:
    """Joints after `base` of a planar chain: each bone turns from u towards n by the running sum."""
    theta = np.radians(np.cumsum(angles_deg))
    dirs = np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * n
    return base + np.cumsum(dirs * lengths[:, None], axis=0)


def _thumb_frame(alpha: float, beta: float, roll: float) -> tuple[tuple, tuple]:
    """Metacarpal direction t and the perpendicular direction f its phalanges flex towards.

    Plain floats, not NumPy: the thumb IK calls this a few hundred times per pinch.
    """
    a, b, r = math.radians(alpha), math.radians(beta), math.radians(roll)
    t = (math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), math.sin(b))
    wt = sum(wi * ti for wi, ti in zip(_THUMB_W, t))
    f = [wi - wt * ti for wi, ti in zip(_THUMB_W, t)]
    norm = math.sqrt(sum(x * x for x in f))
    f = [x / norm for x in f]
    g = (t[1] * f[2] - t[2] * f[1], t[2] * f[0] - t[0] * f[2], t[0] * f[1] - t[1] * f[0])  # t x f
    return t, tuple(math.cos(r) * fi + math.sin(r) * gi for fi, gi in zip(f, g))


_THUMB_W = tuple(_THUMB_FLEX_DIR / np.linalg.norm(_THUMB_FLEX_DIR))


def _thumb_tip(shape: HandShape, thumb, roll: float) -> np.ndarray:
    """The thumb tip alone (what the IK moves), without building the whole chain."""
    alpha, beta, mcp_flex, ip_flex = thumb
    t, f = _thumb_frame(alpha, beta, roll)
    l0, l1, l2 = (float(x) for x in shape.thumb_bones)
    c1, s1 = math.cos(math.radians(mcp_flex)), math.sin(math.radians(mcp_flex))
    c2, s2 = math.cos(math.radians(mcp_flex + ip_flex)), math.sin(math.radians(mcp_flex + ip_flex))
    return np.array([float(shape.thumb_cmc[k]) + (l0 + l1 * c1 + l2 * c2) * t[k] + (l1 * s1 + l2 * s2) * f[k]
                     for k in range(3)])


def _thumb_joints(shape: HandShape, thumb: np.ndarray, roll: float) -> np.ndarray:
    alpha, beta, mcp_flex, ip_flex = thumb
    t, f = (np.array(v) for v in _thumb_frame(alpha, beta, roll))
    mcp = shape.thumb_cmc + shape.thumb_bones[0] * t
    rest = _finger_chain(mcp, t, f, shape.thumb_bones[1:], np.array([mcp_flex, ip_flex]))
    return np.vstack([shape.thumb_cmc, mcp, rest])


def joints(shape: HandShape, pose: HandPose) -> np.ndarray:
    """(21, 3) joint positions in the hand frame."""
    out = np.zeros((NUM_JOINTS, 3))
    out[1:5] = _thumb_joints(shape, pose.thumb, pose.thumb_roll)
    n = np.array([0.0, 0.0, 1.0])
    for f in range(4):
        phi = np.radians(pose.splay[f])
        u = np.array([np.sin(phi), np.cos(phi), 0.0])
        base = shape.mcp[f] + [0.0, 0.0, _CUP_Z[f] * pose.cup * shape.size]
        idx = FINGER_JOINTS[f + 1]
        out[idx[0]] = base
        out[idx[1:]] = _finger_chain(base, u, n, shape.phalanx[f], pose.flex[f])
    return out


def _thumb_ik(shape: HandShape, pose: HandPose, target: np.ndarray, iters: int = 25) -> np.ndarray:
    """Thumb angles (within limits) whose tip is nearest `target`: damped Gauss-Newton."""
    x = pose.thumb.astype(float).copy()
    lo, hi = THUMB_LIMITS[:, 0], THUMB_LIMITS[:, 1]
    for _ in range(iters):
        here = _thumb_tip(shape, x, pose.thumb_roll)
        r = here - target
        if r @ r < 1e-8:
            break
        J = np.stack([(_thumb_tip(shape, x + d, pose.thumb_roll) - here) / 0.5 for d in np.eye(4) * 0.5],
                     axis=1)  # metres per degree
        step = np.linalg.solve(J.T @ J + 1e-7 * np.eye(4), -J.T @ r)
        x = np.clip(x + np.clip(step, -15, 15), lo, hi)
    return x


def forearm_direction(pose: HandPose) -> np.ndarray:
    """Unit vector from the wrist towards the elbow, hand frame (wrist flexion and deviation)."""
    fl, dev = np.radians(pose.wrist)
    return np.array([-np.sin(dev) * np.cos(fl), -np.cos(dev) * np.cos(fl), np.sin(fl)])


# -- pose variety ---------------------------------------------------------------------------
def similarity_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """src (..., J, 3) moved onto dst by the best scale + rotation (no reflection) + translation."""
    mu_s, mu_d = src.mean(-2, keepdims=True), dst.mean(-2, keepdims=True)
    s, d = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(np.swapaxes(d, -1, -2) @ s)
    sign = np.sign(np.linalg.det(U @ Vt))
    D = np.ones(S.shape)
    D[..., -1] = sign
    R = (U * D[..., None, :]) @ Vt
    scale = (S * D).sum(-1) / (s**2).sum((-1, -2))
    return scale[..., None, None] * s @ np.swapaxes(R, -1, -2) + mu_d


def pose_variety_mm(xyz: np.ndarray, iters: int = 5) -> float:
    """Mean-shape baseline (mm) of hands xyz (n, 21, 3) metres: how poorly one shape fits all.

    Generalised Procrustes: align every hand to the running mean (scale, rotation,
    translation), average; then align that mean onto each hand and take the mean joint error.
    """
    xyz = np.asarray(xyz, dtype=float)
    mean = xyz[0] - xyz[0].mean(0)
    for _ in range(iters):
        mean = similarity_align(xyz, np.broadcast_to(mean, xyz.shape)).mean(0)
        mean = (mean - mean.mean(0)) / np.linalg.norm(mean - mean.mean(0))
    fit = similarity_align(np.broadcast_to(mean, xyz.shape), xyz)
    return float(np.linalg.norm(fit - xyz, axis=-1).mean() * 1000.0)
