"""Metrics against hand-computed cases and a line-by-line port of FreiHAND's official loops."""

from __future__ import annotations

import numpy as np
import pytest

from tune_hand.errors import TuneHandError
from tune_hand.geometry import rot_z
from tune_hand.metrics import (
    AUC_THRESHOLDS_MM, MetricInputError, auc_0_50mm, auc_of_errors, freihand_aligned_mm, mean_hand_camera,
    mean_hand_shape, mpjpe_mm, pa_mpjpe_mm, pck_curve, procrustes_align, score,
)


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform proper rotations (n, 3, 3) from QR of Gaussian matrices."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def hands(rng: np.random.Generator, n: int, pose_noise_mm: float = 5.0) -> np.ndarray:
    """n non-planar 'hands' (n, 21, 3) mm: one base shape, some pose noise, random rotation, at ~500 mm."""
    base = np.random.default_rng(42).normal(scale=40.0, size=(21, 3))
    shapes = base + rng.normal(scale=pose_noise_mm, size=(n, 21, 3))
    return shapes @ random_rotations(rng, n).transpose(0, 2, 1) + np.array([0.0, 0.0, 500.0])


@pytest.fixture
def gt():
    return hands(np.random.default_rng(0), 6)


def test_similarity_copy_scores_zero_aligned(gt):
    rng = np.random.default_rng(1)
    rot = random_rotations(rng, len(gt))
    pred = 1.7 * gt @ rot.transpose(0, 2, 1) + rng.normal(scale=100.0, size=(len(gt), 1, 3))
    assert pa_mpjpe_mm(pred, gt) == pytest.approx(0.0, abs=1e-9)
    assert freihand_aligned_mm(pred, gt) == pytest.approx(0.0, abs=1e-9)
    assert auc_0_50mm(pred, gt) == pytest.approx(1.0)
    assert mpjpe_mm(pred, gt) > 10.0


def test_procrustes_recovers_a_known_similarity(gt):
    rot = rot_z(0.8) @ random_rotations(np.random.default_rng(2), 1)[0]
    pred = (gt - 3.0) @ rot.T / 2.0
    assert np.allclose(procrustes_align(pred, gt, allow_reflection=False), gt, atol=1e-9)


def test_known_shift_is_the_unaligned_error(gt):
    pred = gt + np.array([3.0, 4.0, 0.0])
    assert mpjpe_mm(pred, gt) == pytest.approx(5.0, abs=1e-12)
    assert pa_mpjpe_mm(pred, gt) == pytest.approx(0.0, abs=1e-9)


def test_mirrored_hand_is_perfect_only_when_reflection_is_allowed(gt):
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert freihand_aligned_mm(mirrored, gt) == pytest.approx(0.0, abs=1e-9)
    assert pa_mpjpe_mm(mirrored, gt) > 5.0


def test_degenerate_prediction_stays_finite(gt):
    collapsed = np.broadcast_to(gt.mean(axis=1, keepdims=True), gt.shape)
    expected = np.linalg.norm(gt - gt.mean(axis=1, keepdims=True), axis=-1).mean()
    assert pa_mpjpe_mm(collapsed, gt) == pytest.approx(expected)


# -- AUC of the PCK curve ------------------------------------------------------------------------

def test_auc_of_a_constant_error_by_hand():
    # Every joint off by 10 mm: PCK is 0 below 10 mm and 1 from there. Thresholds are
    # i * 50/99; the first >= 10 is i = 20, so 79 full steps plus half the [19, 20] step.
    assert auc_of_errors(np.full((4, 21), 10.0)) == pytest.approx(79.5 / 99)
    half = np.concatenate([np.zeros((2, 21)), np.full((2, 21), 80.0)])
    assert np.allclose(pck_curve(half), 0.5)  # 0 <= 0: PCK counts errors at the threshold
    assert auc_of_errors(half) == pytest.approx(0.5)


def freihand_eval_reference(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """lmb-freiburg/freihand eval.py, per sample and per joint as written there (in mm, not m)."""
    errors = []
    for p, g in zip(pred, gt):
        # align_w_scale(mtx1=g, mtx2=p) with scipy.linalg.orthogonal_procrustes(g_t, p_t)
        t1, t2 = g.mean(0), p.mean(0)
        g_t, p_t = g - t1, p - t2
        s1, s2 = np.linalg.norm(g_t) + 1e-8, np.linalg.norm(p_t) + 1e-8
        g_t, p_t = g_t / s1, p_t / s2
        u, w, vt = np.linalg.svd((p_t.T @ g_t).T)
        R, s = u @ vt, w.sum()
        aligned = p_t @ R.T * s * s1 + t1
        errors.append(np.linalg.norm(aligned - g, axis=1))
    errors = np.array(errors)  # (B, J)
    thresholds = np.linspace(0.0, 50.0, 100)
    trapz = getattr(np, "trapezoid", None) or np.trapz
    norm = trapz(np.ones_like(thresholds), thresholds)
    aucs = []
    for j in range(errors.shape[1]):
        curve = np.array([np.mean((errors[:, j] <= t).astype("float")) for t in thresholds])
        aucs.append(trapz(curve, thresholds) / norm)
    return float(np.mean(errors.mean(axis=0))), float(np.mean(aucs))


def test_matches_the_official_freihand_evaluation(gt):
    pred = gt + np.random.default_rng(5).normal(scale=12.0, size=gt.shape)
    aligned_ref, auc_ref = freihand_eval_reference(pred, gt)
    assert freihand_aligned_mm(pred, gt) == pytest.approx(aligned_ref, rel=1e-6)
    assert auc_0_50mm(pred, gt) == pytest.approx(auc_ref, rel=1e-9)
    assert 0.0 < auc_ref < 1.0


def test_score_has_every_metric(gt):
    pred = gt + np.random.default_rng(6).normal(scale=8.0, size=gt.shape)
    s = score(pred, gt)
    assert set(s) == {"pa_mpjpe_mm", "freihand_aligned_mm", "auc_0_50mm", "mpjpe_mm", "n"}
    assert s["n"] == len(gt)
    assert s["pa_mpjpe_mm"] == pytest.approx(pa_mpjpe_mm(pred, gt))
    assert s["freihand_aligned_mm"] == pytest.approx(freihand_aligned_mm(pred, gt))
    assert s["freihand_aligned_mm"] <= s["pa_mpjpe_mm"] + 1e-9 <= s["mpjpe_mm"] + 1e-9
    assert s["auc_0_50mm"] == pytest.approx(auc_0_50mm(pred, gt))
    assert len(AUC_THRESHOLDS_MM) == 100


# -- constant baselines ------------------------------------------------------------------------

def test_mean_shape_beats_the_camera_mean_after_alignment():
    rng = np.random.default_rng(7)
    train, test = hands(rng, 300), hands(rng, 100)
    camera, shape = mean_hand_camera(train), mean_hand_shape(train)
    assert camera.shape == shape.shape == (21, 3)
    as_pred = lambda hand: np.broadcast_to(hand, test.shape)  # noqa: E731
    shape_error, camera_error = pa_mpjpe_mm(as_pred(shape), test), pa_mpjpe_mm(as_pred(camera), test)
    assert shape_error < 0.5 * camera_error
    # the pose noise (5 mm per coordinate) is all that is left for the mean shape
    assert shape_error < 10.0


def test_mean_shape_of_similar_hands_is_their_shape():
    rng = np.random.default_rng(8)
    one = hands(rng, 1, pose_noise_mm=0.0)
    scale = rng.uniform(0.8, 1.2, size=(50, 1, 1))
    train = scale * one @ random_rotations(rng, 50).transpose(0, 2, 1) + rng.normal(scale=50, size=(50, 1, 3))
    shape = mean_hand_shape(train)
    assert pa_mpjpe_mm(shape[None], one) == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(shape.mean(axis=0), train.mean(axis=(0, 1)))


# -- input validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("pred_shape, gt_shape", [
    ((2, 20, 3), (2, 20, 3)), ((21, 3), (21, 3)), ((2, 21, 3), (3, 21, 3)), ((2, 21, 2), (2, 21, 2)),
    ((0, 21, 3), (0, 21, 3)),
])
def test_bad_shapes_raise_one_line_errors(pred_shape, gt_shape):
    with pytest.raises(MetricInputError) as err:
        score(np.zeros(pred_shape), np.zeros(gt_shape))
    assert isinstance(err.value, ValueError) and isinstance(err.value, TuneHandError)
    assert "\n" not in str(err.value)


def test_non_finite_predictions_raise(gt):
    pred = gt.copy()
    pred[1, 3, 0] = np.nan
    with pytest.raises(MetricInputError, match="1 of 6 samples contain NaN or inf"):
        pa_mpjpe_mm(pred, gt)
    with pytest.raises(MetricInputError):
        mean_hand_shape(np.full((2, 21, 3), np.inf))
