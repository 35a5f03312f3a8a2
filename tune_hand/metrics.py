"""3D keypoint metrics (DESIGN section 4) and the two constant baselines, in numpy, batched.

    s = score(pred_mm, gt_mm)   # {"pa_mpjpe_mm", "freihand_aligned_mm", "auc_0_50mm", "mpjpe_mm", "n"}

- `pa_mpjpe_mm` (the paper's score; ASHA and the search minimise it): per sample, fit scale,
  rotation (no reflection) and translation of the prediction onto the truth, mean joint
  error, then mean over samples.
- `freihand_aligned_mm`: the official Codalab aligned error (lmb-freiburg/freihand eval.py,
  `align_w_scale`), which uses scipy's orthogonal_procrustes and so ALLOWS a reflection.
- `auc_0_50mm`: AUC of the 3D PCK curve of those FreiHAND-aligned per-joint errors over 100
  thresholds np.linspace(0, 50, 100) mm, as the official EvalUtil.get_measures: PCK uses
  `error <= threshold`, trapezoid rule, divided by the trapezoid of ones (the 50 mm range).
- `mpjpe_mm`: the unaligned error, both inputs as given (camera frame for FreiHAND).

All inputs are (B, 21, 3) arrays in mm. Anything else, or a non-finite value, raises a
one-line `MetricInputError` (both a ValueError and a TuneHandError): a diverged model's NaN
predictions must be caught and reported by the caller, never averaged into a score.
"""

from __future__ import annotations

import numpy as np

from .errors import TuneHandError

NUM_JOINTS = 21
AUC_THRESHOLDS_MM = np.linspace(0.0, 50.0, 100)
_PCK_TOLERANCE_MM = 1e-9
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed np.trapz


class MetricInputError(TuneHandError, ValueError):
    """Predictions or ground truth of the wrong shape, or not finite."""


# -- alignment -----------------------------------------------------------------------

def procrustes_align(pred: np.ndarray, gt: np.ndarray, allow_reflection: bool) -> np.ndarray:
    """Similarity-align each pred (B, J, 3) onto gt (B, J, 3): returns s * pred @ R.T + t.

    Umeyama's least-squares solution, one batched SVD. With allow_reflection=False, R is a
    proper rotation (det +1); with True, R may be a reflection (scipy orthogonal_procrustes,
    as FreiHAND's official evaluation). A degenerate prediction (all joints at one point)
    gets scale 0, i.e. every joint at the truth's centroid.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    mu_p, mu_g = pred.mean(axis=1, keepdims=True), gt.mean(axis=1, keepdims=True)
    p, g = pred - mu_p, gt - mu_g
    cov = np.einsum("bji,bjk->bik", p, g)  # sum_j p_j g_j^T
    u, sv, vt = np.linalg.svd(cov)
    # rotation = V diag(1, 1, d) U^T maximises trace(R cov); d = -1 would flip a reflection away
    d = np.ones_like(sv)
    if not allow_reflection:
        d[:, -1] = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", u, vt)))
        d[d[:, -1] == 0, -1] = 1.0
    rot = np.einsum("bji,bj,bkj->bik", vt, d, u)  # V @ diag(d) @ U^T
    var_p = np.einsum("bji,bji->b", p, p)
    scale = (sv * d).sum(axis=1) / np.maximum(var_p, 1e-12)
    return scale[:, None, None] * np.einsum("bik,bjk->bji", rot, p) + mu_g


# -- per-joint errors and the scores -----------------------------------------------------

def joint_errors_mm(pred_mm: np.ndarray, gt_mm: np.ndarray) -> np.ndarray:
    """Euclidean error (B, J) of each joint, no alignment."""
    return np.linalg.norm(np.asarray(pred_mm, dtype=np.float64) - np.asarray(gt_mm, dtype=np.float64), axis=-1)


def mpjpe_mm(pred_mm: np.ndarray, gt_mm: np.ndarray) -> float:
    """Unaligned mean per-joint position error in mm."""
    pred, gt = _checked(pred_mm, gt_mm)
    return float(joint_errors_mm(pred, gt).mean())


def pa_mpjpe_mm(pred_mm: np.ndarray, gt_mm: np.ndarray) -> float:
    """The paper's Procrustes-aligned error (no reflection): mean over joints, then samples."""
    pred, gt = _checked(pred_mm, gt_mm)
    return float(joint_errors_mm(procrustes_align(pred, gt, allow_reflection=False), gt).mean())


def freihand_aligned_mm(pred_mm: np.ndarray, gt_mm: np.ndarray) -> float:
    """FreiHAND's official aligned keypoint error (reflection allowed), in mm."""
    pred, gt = _checked(pred_mm, gt_mm)
    return float(_freihand_aligned_errors(pred, gt).mean())


def auc_0_50mm(pred_mm: np.ndarray, gt_mm: np.ndarray) -> float:
    """AUC in [0, 1] of the 3D PCK of FreiHAND-aligned joint errors over 0..50 mm (100 thresholds)."""
    pred, gt = _checked(pred_mm, gt_mm)
    return auc_of_errors(_freihand_aligned_errors(pred, gt))


def score(pred_mm: np.ndarray, gt_mm: np.ndarray) -> dict:
    """Every metric at once (one alignment each): pa_mpjpe_mm, freihand_aligned_mm, auc_0_50mm, mpjpe_mm, n."""
    pred, gt = _checked(pred_mm, gt_mm)
    aligned_errors = _freihand_aligned_errors(pred, gt)
    return {
        "pa_mpjpe_mm": float(joint_errors_mm(procrustes_align(pred, gt, allow_reflection=False), gt).mean()),
        "freihand_aligned_mm": float(aligned_errors.mean()),
        "auc_0_50mm": auc_of_errors(aligned_errors),
        "mpjpe_mm": float(joint_errors_mm(pred, gt).mean()),
        "n": int(pred.shape[0]),
    }


def pck_curve(errors_mm: np.ndarray, thresholds_mm: np.ndarray = AUC_THRESHOLDS_MM) -> np.ndarray:
    """Fraction of errors <= each threshold (FreiHAND's PCK), over all samples and joints.

    FreiHAND averages per-joint curves; with every joint present in every sample that is
    the same as pooling all errors. Errors within 1e-9 mm of a threshold count as under it,
    so alignment round-off (~1e-13 mm) does not drop a perfect prediction's PCK at 0 mm
    (which would cost it half a step: AUC 0.995 instead of 1).
    """
    flat = np.sort(np.asarray(errors_mm, dtype=np.float64).ravel())
    return np.searchsorted(flat, np.asarray(thresholds_mm) + _PCK_TOLERANCE_MM, side="right") / flat.size


def auc_of_errors(errors_mm: np.ndarray, thresholds_mm: np.ndarray = AUC_THRESHOLDS_MM) -> float:
    """Area under `pck_curve`, normalised by the threshold range so a perfect score is 1."""
    area = _trapezoid(pck_curve(errors_mm, thresholds_mm), thresholds_mm)
    return float(area / _trapezoid(np.ones_like(thresholds_mm), thresholds_mm))


def _freihand_aligned_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return joint_errors_mm(procrustes_align(pred, gt, allow_reflection=True), gt)


# -- constant baselines --------------------------------------------------------------------

def mean_hand_camera(train_xyz_mm: np.ndarray) -> np.ndarray:
    """The training mean hand (21, 3) in the camera frame: the constant the unaligned error rewards."""
    xyz = _checked_hands(train_xyz_mm)
    return xyz.mean(axis=0)


def mean_hand_shape(train_xyz_mm: np.ndarray, iterations: int = 5) -> np.ndarray:
    """The mean hand SHAPE (21, 3): generalised Procrustes analysis of the training hands.

    Start from the camera-frame mean (so the result has a familiar orientation), align every
    hand to the reference with a similarity (no reflection: hands have a handedness),
    average, repeat. The result is rescaled to the training hands' mean size and placed at
    their mean centroid. It is the best constant predictor for the aligned metrics (its
    placement only matters for the unaligned one).
    """
    xyz = _checked_hands(train_xyz_mm)
    centroids = xyz.mean(axis=1, keepdims=True)
    centred = xyz - centroids
    ref = centred.mean(axis=0)
    for _ in range(max(int(iterations), 1)):
        targets = np.broadcast_to(ref, centred.shape)
        ref = procrustes_align(centred, targets, allow_reflection=False).mean(axis=0)
        ref -= ref.mean(axis=0)
    size = np.linalg.norm(centred, axis=(1, 2)).mean()
    ref *= size / max(np.linalg.norm(ref), 1e-12)
    return ref + centroids.mean(axis=0)


# -- validation --------------------------------------------------------------------------

def _checked(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = _checked_hands(pred, "prediction")
    gt = _checked_hands(gt, "ground truth")
    if pred.shape != gt.shape:
        raise MetricInputError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return pred, gt


def _checked_hands(xyz: np.ndarray, what: str = "hands") -> np.ndarray:
    arr = np.asarray(xyz, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3) or arr.shape[0] == 0:
        raise MetricInputError(f"{what}: expected shape (B, {NUM_JOINTS}, 3) with B >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=(1, 2)).sum())
        raise MetricInputError(f"{what}: {bad} of {arr.shape[0]} samples contain NaN or inf")
    return arr
