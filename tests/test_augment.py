"""Augmentation: the warped image and the moved labels must agree, checked with a rendered marker.

A bright Gaussian dot is drawn where a joint projects, the image goes through `apply()`, and the dot's
intensity-weighted centroid in the output must land on project(K_out, xyz_out) of that joint. That
compares the pixel warp against the label transform through an image, not through the same formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tune_hand.config import AugmentConfig
from tune_hand.data.augment import (AugmentParams, antialias_sigma, apply, color_jitter, geometric_matrix, geometry,
                                    sample_params)
from tune_hand.geometry import apply_affine, backproject, project, resize_affine, rot_z

SIZE = 224
DEPTH = np.array([0.55, 0.62, 0.70])  # metres


def _camera(offset=(9.0, -6.0), fx=400.0, fy=430.0, size=SIZE) -> np.ndarray:
    """Off-centre principal point and fx != fy unless told otherwise."""
    c = (size - 1) / 2
    return np.array([[fx, 0.0, c + offset[0]], [0.0, fy, c + offset[1]], [0.0, 0.0, 1.0]])


def _joints(K: np.ndarray) -> np.ndarray:
    """Three joints projecting 25-45 px away from the principal point, so rotations move them."""
    uv = K[:2, 2] + np.array([[38.0, -25.0], [-30.0, -33.0], [12.0, 41.0]])
    return backproject(K, uv, DEPTH)


def _marker(size: int, uv: np.ndarray, sigma: float = 2.5) -> np.ndarray:
    """A grey Gaussian dot (peak 255) centred on uv (OpenCV pixel centres) in a black RGB image."""
    cols = np.arange(size)
    g = np.exp(-((cols[None, :] - uv[0]) ** 2 + (cols[:, None] - uv[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(255 * g).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image: np.ndarray) -> np.ndarray:
    w = image[..., 0].astype(np.float64)
    rows, cols = np.indices(w.shape)
    return np.array([(w * cols).sum(), (w * rows).sum()]) / w.sum()


def _deg(d: float) -> float:
    return math.radians(d)


GEOMETRIC_CASES = {
    "resize_only": AugmentParams(),
    "rot_30": AugmentParams(theta=_deg(30)),
    "rot_-90": AugmentParams(theta=_deg(-90)),
    "rot_179.9": AugmentParams(theta=_deg(179.9)),
    "rot_-179.9": AugmentParams(theta=_deg(-179.9)),
    "rot_180": AugmentParams(theta=_deg(180)),
    "flip": AugmentParams(flip=True),
    "zoom_in": AugmentParams(scale=1.25),
    "zoom_out": AugmentParams(scale=0.8),
    "shift": AugmentParams(shift=(7.3, -4.6)),
    "flip_rot": AugmentParams(theta=_deg(123.0), flip=True),
    "rot_scale": AugmentParams(theta=_deg(-179.9), scale=0.85),
    "all": AugmentParams(theta=_deg(180), flip=True, scale=1.15, shift=(-5.5, 8.25)),
    "all_jitter": AugmentParams(theta=_deg(-67.0), flip=True, scale=0.9, shift=(3.0, -2.0),
                                jitter=(0.2, 0.0, 0.3, 0.05)),
}


@pytest.mark.parametrize("size_out", [SIZE, 128, 320, 64])
@pytest.mark.parametrize("name", list(GEOMETRIC_CASES))
def test_marker_lands_on_transformed_label(name, size_out):
    params = GEOMETRIC_CASES[name]
    K = _camera()
    xyz = _joints(K)
    uv_in = project(K, xyz)
    for j in range(len(xyz)):
        image, K_out, xyz_out = apply(_marker(SIZE, uv_in[j]), K, xyz, params, size_out)
        assert image.shape == (size_out, size_out, 3) and image.dtype == np.uint8
        expected = project(K_out, xyz_out)[j]
        margin = 12 * size_out / SIZE
        assert np.all(expected > margin) and np.all(expected < size_out - margin), "marker left the image"
        error = np.abs(_centroid(image) - expected).max()
        assert error < 0.1, f"{name}, joint {j}, {SIZE}->{size_out}: marker off by {error:.3f} px"


@pytest.mark.parametrize("degrees", [0.0, 30.0, -90.0, 179.9, -179.9, 180.0])
@pytest.mark.parametrize("size_out", [SIZE, 96])
def test_pure_rotation_rotates_points_about_optical_axis(degrees, size_out):
    K = _camera(offset=(13.0, 7.0), fx=380.0, fy=455.0)
    xyz = _joints(K)
    _, K_out, xyz_out = apply(np.zeros((SIZE, SIZE, 3), np.uint8), K, xyz, AugmentParams(theta=_deg(degrees)),
                              size_out)
    np.testing.assert_allclose(xyz_out, xyz @ rot_z(_deg(degrees)).T, atol=1e-12)
    np.testing.assert_allclose(K_out, resize_affine(SIZE, size_out) @ K)


def test_flip_mirrors_points_exactly():
    K = _camera(offset=(9.0, -6.0))
    xyz = _joints(K)
    _, _, xyz_out = apply(np.zeros((SIZE, SIZE, 3), np.uint8), K, xyz, AugmentParams(flip=True), SIZE)
    np.testing.assert_allclose(xyz_out, xyz * [-1.0, 1.0, 1.0], atol=1e-12)


def test_flip_with_centred_principal_point_is_the_plain_image_mirror():
    K = _camera(offset=(0.0, 0.0))
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    out, _, _ = apply(image, K, _joints(K), AugmentParams(flip=True), SIZE)
    np.testing.assert_array_equal(out, image[:, ::-1])  # u' = W - 1 - u


def test_flip_probability_one_always_flips():
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(rotation_deg=0.0, flip=1.0)
    assert all(sample_params(cfg, rng, SIZE).flip for _ in range(50))


@pytest.mark.parametrize("scale", [0.7, 1.3])
def test_scale_about_principal_point_scales_x_y_and_keeps_depth(scale):
    K = _camera()
    xyz = _joints(K)
    _, _, xyz_out = apply(np.zeros((SIZE, SIZE, 3), np.uint8), K, xyz, AugmentParams(scale=scale), 160)
    np.testing.assert_allclose(xyz_out, xyz * [scale, scale, 1.0], atol=1e-12)


def test_shift_moves_points_at_constant_depth():
    K = _camera()
    xyz = _joints(K)
    du, dv = 6.5, -3.0
    _, K_out, xyz_out = apply(np.zeros((SIZE, SIZE, 3), np.uint8), K, xyz, AugmentParams(shift=(du, dv)), 160)
    expected = xyz + np.stack([du * xyz[:, 2] / K_out[0, 0], dv * xyz[:, 2] / K_out[1, 1], 0 * xyz[:, 2]], -1)
    np.testing.assert_allclose(xyz_out, expected, atol=1e-12)


def test_resize_only_keeps_points_and_scales_camera():
    K = _camera()
    xyz = _joints(K)
    image = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    out, K_out, xyz_out = apply(image, K, xyz, None, 64)
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(xyz_out, xyz, atol=1e-12)
    np.testing.assert_allclose(K_out, resize_affine(SIZE, 64) @ K)
    same, K_same, _ = apply(image, K, xyz, None, SIZE)
    np.testing.assert_array_equal(same, image)
    np.testing.assert_allclose(K_same, K)


def test_zero_probabilities_give_identity():
    cfg = AugmentConfig(rotation_deg=180.0, rotation_prob=0.0, flip=0.0, color_jitter=0.5, color_jitter_prob=0.0,
                        scale=0.3, scale_prob=0.0, translate=0.2, translate_prob=0.0)
    rng = np.random.default_rng(0)
    K = _camera()
    xyz = _joints(K)
    image = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    for _ in range(20):
        params = sample_params(cfg, rng, SIZE)
        assert params.is_identity
        out, K_out, xyz_out = apply(image, K, xyz, params, SIZE)
        np.testing.assert_array_equal(out, image)
        np.testing.assert_allclose(xyz_out, xyz, atol=1e-12)
        np.testing.assert_allclose(K_out, K)


def test_sampled_magnitudes_respect_config():
    cfg = AugmentConfig(rotation_deg=45.0, flip=0.5, color_jitter=0.4, scale=0.2, translate=0.1)
    rng = np.random.default_rng(3)
    draws = [sample_params(cfg, rng, 128) for _ in range(300)]
    theta = np.array([p.theta for p in draws])
    assert np.abs(theta).max() <= math.radians(45.0) and np.abs(theta).max() > math.radians(40.0)
    assert all(0.8 <= p.scale <= 1.2 for p in draws)
    assert all(abs(s) <= 12.8 for p in draws for s in p.shift)
    jitter = np.array([p.jitter for p in draws])
    assert np.abs(jitter[:, :3]).max() <= 0.4 and np.abs(jitter[:, 3]).max() <= 0.04
    assert 0.35 < np.mean([p.flip for p in draws]) < 0.65


def test_sample_params_is_a_function_of_the_generator_state():
    cfg = AugmentConfig(flip=0.5, color_jitter=0.3, scale=0.2, translate=0.1)
    a = sample_params(cfg, np.random.default_rng(7), 128)
    b = sample_params(cfg, np.random.default_rng(7), 128)
    c = sample_params(cfg, np.random.default_rng(8), 128)
    assert a == b and a != c


def test_geometric_matrix_is_affine_and_includes_resize():
    K = _camera()
    A = geometric_matrix(AugmentParams(theta=0.3, flip=True, scale=1.1, shift=(2.0, 1.0)), K, SIZE, 96)
    np.testing.assert_allclose(A[2], [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(geometric_matrix(AugmentParams(), K, SIZE, 96), resize_affine(SIZE, 96))


def test_colour_jitter_leaves_geometry_untouched():
    K = _camera()
    xyz = _joints(K)
    image = np.random.default_rng(4).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    geometric = AugmentParams(theta=0.4, scale=1.1)
    jittered = AugmentParams(theta=0.4, scale=1.1, jitter=(0.3, -0.2, 0.4, 0.05))
    out_a, K_a, xyz_a = apply(image, K, xyz, geometric, 128)
    out_b, K_b, xyz_b = apply(image, K, xyz, jittered, 128)
    np.testing.assert_array_equal(K_a, K_b)
    np.testing.assert_array_equal(xyz_a, xyz_b)
    assert np.abs(out_a.astype(int) - out_b.astype(int)).mean() > 5


def test_brightness_scales_pixels_and_saturates():
    image = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = color_jitter(image, (0.25, 0.0, 0.0, 0.0))
    assert out.dtype == np.uint8 and out.shape == image.shape
    expected = np.clip(image * 1.25, 0, 255)
    assert np.abs(out - expected).max() <= 1.0


def test_contrast_saturation_and_hue_extremes():
    image = np.random.default_rng(6).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    flat = color_jitter(image, (0.0, -1.0, 0.0, 0.0)).astype(int)  # contrast 0: everything at the mean grey
    assert flat.max() - flat.min() <= 1
    grey = color_jitter(image, (0.0, 0.0, -1.0, 0.0)).astype(int)  # saturation 0: R = G = B
    assert np.abs(grey - grey[..., :1]).max() <= 1
    greys = np.repeat(np.arange(0, 256, 8, dtype=np.uint8)[:, None, None], 3, axis=2)
    np.testing.assert_allclose(color_jitter(greys, (0.0, 0.0, 0.0, 0.1)), greys, atol=1)  # hue keeps greys


def test_colour_jitter_changes_pixels_within_bounds():
    image = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rng = np.random.default_rng(8)
    for _ in range(20):
        jitter = sample_params(AugmentConfig(rotation_deg=0.0, color_jitter=0.3), rng, 32).jitter
        out = color_jitter(image, jitter)
        assert out.dtype == np.uint8 and not np.array_equal(out, image)
        # brightness, contrast, saturation at most 1.3x each: the mean stays within (1.3**2) of the input's
        assert 0.7**2 * image.mean() - 2 <= out.mean() <= 1.3**2 * image.mean() + 2


def test_missing_ground_truth_passes_through():
    image, K_out, xyz_out = apply(np.zeros((SIZE, SIZE, 3), np.uint8), _camera(), None, AugmentParams(theta=1.0), 64)
    assert xyz_out is None and image.shape == (64, 64, 3)


def test_non_square_image_is_refused():
    with pytest.raises(ValueError, match="square"):
        apply(np.zeros((200, SIZE, 3), np.uint8), _camera(), None, None, 64)


# -- the fast path: closed-form geometry, planar output ----------------------------------------------


@pytest.mark.parametrize("name", list(GEOMETRIC_CASES))
def test_closed_form_labels_equal_project_affine_backproject(name):
    """geometry() moves labels with one 3x3 map; it must equal projecting, applying A, backprojecting."""
    params = GEOMETRIC_CASES[name]
    K = _camera(offset=(11.0, -7.0), fx=390.0, fy=447.0)
    K[0, 1] = 2.5  # a skewed camera too
    xyz = _joints(K)
    A, K_out, xyz_out = geometry(params, K, xyz, SIZE, 96)
    np.testing.assert_allclose(A[:2], geometric_matrix(params, K, SIZE, 96)[:2])
    np.testing.assert_allclose(K_out, resize_affine(SIZE, 96) @ K, atol=1e-12)
    expected = backproject(K_out, apply_affine(A, project(K, xyz)), xyz[:, 2])
    np.testing.assert_allclose(xyz_out, expected, atol=1e-12)


@pytest.mark.parametrize("size_out", [SIZE, 64])
def test_chw_output_is_the_hwc_image_transposed(size_out):
    K = _camera()
    image = np.random.default_rng(9).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    for params in (None, GEOMETRIC_CASES["all_jitter"], GEOMETRIC_CASES["rot_30"]):
        hwc, _, _ = apply(image, K, None, params, size_out)
        chw, _, _ = apply(image, K, None, params, size_out, chw=True)
        assert chw.shape == (3, size_out, size_out) and chw.flags.c_contiguous
        np.testing.assert_array_equal(chw, hwc.transpose(2, 0, 1))


def test_antialias_sigma_uses_the_smallest_singular_value():
    rng = np.random.default_rng(10)
    for _ in range(50):
        A = np.eye(3)
        A[:2, :2] = rng.uniform(-0.8, 0.8, (2, 2))
        shrink = 1.0 / np.linalg.svd(A[:2, :2], compute_uv=False)[-1]
        expected = (shrink - 1.0) / 2.0 if shrink > 1.25 else 0.0
        assert antialias_sigma(A) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert antialias_sigma(np.eye(3)) == 0.0
