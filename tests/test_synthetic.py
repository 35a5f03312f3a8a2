"""The synthetic FreiHAND renderer: layout, determinism, geometry, pose variety, occlusion, errors."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from tune_hand.data.synth import hand_model as hm
from tune_hand.data.synth import volumes as hv
from tune_hand.data.synth.render import SUPERSAMPLE, raycast, render_sample
from tune_hand.data.synth.scene import _orientation, place_hand, random_rotation
from tune_hand.data.synth.write import render_dataset, sample_rng, write_preview
from tune_hand.errors import TuneHandError
from tune_hand.geometry import project, resize_affine
from tune_hand.viz import BONES, contact_sheet, draw_skeleton

N_TRAIN, N_EVAL, SIZE = 6, 3, 224


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "data"
    summary = render_dataset(root, N_TRAIN, N_EVAL, seed=0)
    assert summary["dir"] == str(root)
    assert (summary["unique_samples"], summary["train_images"], summary["eval_images"]) == (9, 24, 3)
    assert summary["images_per_s"] > 0
    return root


@pytest.fixture(scope="module")
def samples() -> list:
    """30 rendered samples (one colour version each) for the geometric checks."""
    return [render_sample(sample_rng(11, "evaluation", i), SIZE, versions=1, studio_first=False) for i in range(30)]


def _json(path: Path):
    return json.loads(path.read_text())


# -- layout ---------------------------------------------------------------------------------------
def test_layout_counts_and_json_shapes(data):
    names = lambda d: sorted(p.name for p in (data / d).iterdir())  # noqa: E731
    assert names("training/rgb") == [f"{i:08d}.jpg" for i in range(4 * N_TRAIN)]
    assert names("training/mask") == [f"{i:08d}.jpg" for i in range(N_TRAIN)]
    assert names("evaluation/rgb") == [f"{i:08d}.jpg" for i in range(N_EVAL)]
    for split, n in (("training", N_TRAIN), ("evaluation", N_EVAL)):
        assert np.array(_json(data / f"{split}_K.json")).shape == (n, 3, 3)
        assert np.array(_json(data / f"{split}_xyz.json")).shape == (n, 21, 3)
        assert np.array(_json(data / f"{split}_scale.json")).shape == (n,)
        mano = np.array(_json(data / f"{split}_mano.json"))
        assert mano.shape == (n, 1, 61) and not mano.any()
        assert np.array(_json(data / f"{split}_verts.json")).shape == (n, 778, 3)
    img = cv2.imread(str(data / "training/rgb/00000023.jpg"))
    assert img.shape == (SIZE, SIZE, 3)
    mask = cv2.imread(str(data / "training/mask/00000005.jpg"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (SIZE, SIZE) and ((mask < 30) | (mask > 225)).mean() > 0.97  # 0/255 up to JPEG


def test_annotations_are_consistent(data):
    K = np.array(_json(data / "training_K.json"))
    xyz = np.array(_json(data / "training_xyz.json"))
    scale = np.array(_json(data / "training_scale.json"))
    verts = np.array(_json(data / "training_verts.json"))
    assert np.allclose(K[:, 2], [0, 0, 1]) and np.all(np.abs(K[:, 0, 0] / K[:, 1, 1] - 1) < 0.03)
    assert np.allclose(scale, np.linalg.norm(xyz[:, 10] - xyz[:, 9], axis=1))
    # the surface points surround the joints: every joint within 4 cm of some point
    gap = np.linalg.norm(xyz[:, :, None] - verts[:, None], axis=-1).min(-1)
    assert gap.max() < 0.04


def test_no_eval_split_when_n_eval_is_zero_and_no_mesh_files(tmp_path):
    render_dataset(tmp_path / "d", 2, 0, with_mesh_files=False)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "training", "training_K.json", "training_scale.json", "training_xyz.json"]


# -- determinism ----------------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, data):
    render_dataset(tmp_path / "a", N_TRAIN, N_EVAL, seed=0)
    assert _tree(tmp_path / "a") == _tree(data)
    render_dataset(tmp_path / "b", 2, 1, seed=1, with_mesh_files=False)
    other = _tree(tmp_path / "b")
    assert other["training_K.json"] != _tree(data)["training_K.json"]
    assert other["training/rgb/00000000.jpg"] != _tree(data)["training/rgb/00000000.jpg"]


def test_samples_do_not_depend_on_dataset_size_or_order():
    a = render_sample(sample_rng(3, "training", 5), 64)
    b = render_sample(sample_rng(3, "training", 5), 64)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images)) and np.array_equal(a.xyz, b.xyz)


def test_parallel_workers_write_the_same_bytes(tmp_path):
    render_dataset(tmp_path / "one", 3, 1, seed=2, image_size=64, with_mesh_files=False)
    render_dataset(tmp_path / "two", 3, 1, seed=2, image_size=64, with_mesh_files=False, workers=2)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")


def _digest(tree: dict[str, bytes], suffix: str) -> str:
    h = hashlib.sha256()
    for name in sorted(n for n in tree if n.endswith(suffix)):
        h.update(Path(name).as_posix().encode() + b"\0" + tree[name])
    return h.hexdigest()


def test_bytes_match_the_renderer_before_it_became_a_package(tmp_path):
    """Digests of a tiny dataset written by tune_hand/data/synthetic.py at 98b7c0e, before the
    split into tune_hand/data/synth/: moving code must not move a single RNG draw. A new NumPy
    or OpenCV may legitimately change them (float kernels, JPEG encoder); then check the
    images by eye (write_preview) and record the new digests."""
    render_dataset(tmp_path / "d", 2, 1, seed=3, image_size=64)
    tree = _tree(tmp_path / "d")
    assert len(tree) == 21
    assert _digest(tree, ".json") == "6aa805719fd81ae8e9ef144f7139dc206b8324237a4158e44f50992fc44cf6d4"
    assert _digest(tree, ".jpg") == "faee2173ff4c4b8060e3f2a831a4daee6ff9174374ae5ce4d3d4f990be98f1ec"


def test_old_module_paths_name_the_same_objects():
    """tune_hand.data.synthetic and tune_hand.data.hand_model stay importable for the code,
    scripts and pickles that name them."""
    from tune_hand.data import hand_model as old_hm
    from tune_hand.data import synth, synthetic

    for name in synth.__all__:
        assert getattr(synthetic, name) is getattr(synth, name), name
    assert synthetic._orientation is _orientation and synthetic.render_dataset is render_dataset
    for name in ("sample_hand", "joints", "forearm_direction", "sample_pose_joints", "pose_variety_mm",
                 "HandShape", "HandPose", "FAMILIES", "FINGER_JOINTS"):
        assert getattr(old_hm, name) is getattr(hm, name), name
    for name in ("Volumes", "hand_volumes", "surface_points", "PALM", "FOREARM", "SLEEVE"):
        assert getattr(old_hm, name) is getattr(hv, name), name


# -- camera and hand geometry ---------------------------------------------------------------------
def test_keypoints_inside_image_and_depth_range(samples, data):
    for s in samples:
        uv = project(s.K, s.xyz)
        assert uv.min() >= 0 and uv.max() <= SIZE - 1
        assert 0.4 <= s.xyz[0, 2] <= 1.0 and s.xyz[:, 2].min() > 0.15
        box = uv.max(0) - uv.min(0)
        assert 0.3 * SIZE < box.max() < 0.9 * SIZE
        assert np.abs(0.5 * (uv.max(0) + uv.min(0)) - (SIZE - 1) / 2).max() < 6  # centred up to the jitter
        assert 380 < s.K[0, 0] < 720
    K = np.array(_json(data / "evaluation_K.json"))
    uv = project(K, np.array(_json(data / "evaluation_xyz.json")))
    assert uv.min() >= 0 and uv.max() <= SIZE - 1


def test_depth_spread_and_nearer_hands_look_bigger():
    """The depth cue is real: over many hands, nearer ones fill more of the crop."""
    rng = np.random.default_rng(0)
    z, extent = [], []
    for _ in range(150):
        shape, pose = hm.sample_hand(rng)
        j = hm.joints(shape, pose)
        R = _orientation(rng, hm.forearm_direction(pose))
        t, K = place_hand(rng, j @ R.T, SIZE)
        uv = project(K, j @ R.T + t)
        z.append(t[2])
        extent.append(np.ptp(uv, axis=0).max())
    z = np.array(z)
    assert z.min() >= 0.4 and z.max() <= 1.0 and np.ptp(z) > 0.35
    assert np.corrcoef(np.log(z), np.log(extent))[0, 1] < -0.2


def test_bone_lengths_and_joint_angles_are_plausible():
    xyz = hm.sample_pose_joints(200, seed=1)
    bones = np.linalg.norm(xyz[:, [c for _, c in BONES]] - xyz[:, [p for p, _ in BONES]], axis=-1)
    middle_proximal = bones[:, 9]  # 9 -> 10
    assert 0.035 < middle_proximal.min() and middle_proximal.max() < 0.062
    assert 0.012 < bones.min() and bones.max() < 0.11
    hand_length = bones[:, 8:12].sum(1)  # wrist -> middle tip along the middle finger
    assert 0.15 < hand_length.min() and hand_length.max() < 0.24
    ratio = hand_length.max() / hand_length.min()
    assert ratio > 1.25  # hand size varies (+-15%)
    # finger joints bend within anatomical limits: the angle between consecutive bones
    for f in range(1, 5):
        j = xyz[:, hm.FINGER_JOINTS[f]]
        b = np.diff(j, axis=1)
        b /= np.linalg.norm(b, axis=-1, keepdims=True)
        bend = np.degrees(np.arccos(np.clip((b[:, 1:] * b[:, :-1]).sum(-1), -1, 1)))
        assert bend.max() < 112


def test_pose_variety_beats_narrow_poses():
    """A constant mean hand shape must be a poor predictor (11.7 mm on a narrow skeleton set)."""
    xyz = hm.sample_pose_joints(200, seed=0)
    assert hm.pose_variety_mm(xyz) > 18.0
    # the helper itself: similarity copies of one hand have no variety
    rng = np.random.default_rng(0)
    copies = np.stack([rng.uniform(0.8, 1.2) * xyz[0] @ random_rotation(rng).T + rng.normal(size=3)
                       for _ in range(10)])
    assert hm.pose_variety_mm(copies) < 1e-6


def test_every_pose_family_is_drawn_and_pinches_touch():
    rng = np.random.default_rng(0)
    families = Counter(hm.sample_hand(rng)[1].family for _ in range(300))
    assert set(families) == set(hm.FAMILIES)
    gaps = []
    for _ in range(20):
        shape, pose = hm.sample_hand(rng, "pinch")
        j = hm.joints(shape, pose)
        gaps.append(min(np.linalg.norm(j[4] - j[8]), np.linalg.norm(j[4] - j[12])))
    assert np.median(gaps) < 0.012


# -- rendering ------------------------------------------------------------------------------------
def test_hand_is_drawn_where_keypoints_project(samples):
    hits = []
    for s in samples:
        near = cv2.dilate(s.mask, np.ones((5, 5), np.uint8))  # within 2 px
        c, r = np.round(project(s.K, s.xyz)).astype(int).T
        hits.append(near[r, c] > 0)
        assert 0.03 < (s.mask > 0).mean() < 0.6
    hits = np.array(hits)
    assert hits.mean() > 0.97
    assert hits[:, [0, 4, 8, 12, 16, 20]].mean() > 0.95  # wrist and fingertips


def test_depth_buffer_sees_each_joint_or_something_in_front(samples):
    """Every joint lies inside the hand's volumes, so the surface seen through its pixel is no
    farther than the joint; and hands occlude themselves (some joints are well hidden)."""
    hidden = 0
    for s in samples:
        Kss = resize_affine(SIZE, SIZE * SUPERSAMPLE) @ s.K
        c, r = np.round(project(Kss, s.xyz)).astype(int).T
        seen = s.depth[r, c]
        assert np.all(seen <= s.xyz[:, 2] + 1e-4)
        hidden += int((seen < s.xyz[:, 2] - 0.02).sum())
    assert hidden > 0


def _two_cones(order: int) -> hv.Volumes:
    """A horizontal cone 0.5 m away crossing a vertical one 0.6 m away, on the optical axis."""
    ends = [[[-0.05, 0.0, 0.5], [0.05, 0.0, 0.5]], [[0.0, -0.05, 0.6], [0.0, 0.05, 0.6]]]
    radii, labels = [[0.01, 0.01], [0.012, 0.012]], [hv.INDEX, hv.RING]
    k = [0, 1][::order]
    return hv.Volumes(np.array(ends)[k], np.array(radii)[k], np.array(labels)[k],
                      np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0, int))


def test_occlusion_nearer_surface_wins_in_any_order():
    K = np.array([[100.0, 0.0, 31.0], [0.0, 100.0, 20.0], [0.0, 0.0, 1.0]])
    for order in (1, -1):
        buf = raycast(_two_cones(order), K, 64)
        # the ray through the principal point's pixel centre (31, 20) meets the near cone head on
        assert buf.label[20, 31] == hv.INDEX
        assert buf.depth[20, 31] == pytest.approx(0.49, abs=1e-5)
        assert buf.normal[:, 20, 31] == pytest.approx([0.0, 0.0, -1.0], abs=1e-4)
        # 6 px down (0.03 m / 0.6 m * 100 px) only the far cone is there
        assert buf.label[26, 31] == hv.RING
        assert buf.depth[26, 31] == pytest.approx(0.588, abs=1e-3)
        assert buf.label[20, 5] == -1 and np.isinf(buf.depth[20, 5])


def test_rays_pass_through_pixel_centres():
    """uv = (K @ xyz) / z with OpenCV pixel centres: a ball centred on the point that projects to
    pixel (40, 30) is nearest there and its distance is symmetric about that pixel (a 0.1 px slip
    breaks the symmetry by 2.5e-4 m)."""
    K = np.array([[100.0, 0.0, 31.0], [0.0, 100.0, 20.0], [0.0, 0.0, 1.0]])
    centre = np.array([(40 - 31) / 100 * 0.5, (30 - 20) / 100 * 0.5, 0.5])
    ball = hv.Volumes(np.array([[centre, centre + [1e-5, 0, 0]]]), np.array([[0.02, 0.02]]), np.array([hv.PALM]),
                      np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0, int))
    v, u = np.mgrid[0:64, 0:64]
    dist = raycast(ball, K, 64).depth * np.sqrt(((u - 31) / 100) ** 2 + ((v - 20) / 100) ** 2 + 1)
    assert dist[30, 40] == pytest.approx(np.linalg.norm(centre) - 0.02, abs=2e-6)
    assert dist[30, 40] < min(dist[29, 40], dist[31, 40], dist[30, 39], dist[30, 41])
    assert dist[30, 39] == pytest.approx(dist[30, 41], abs=2e-5)
    assert dist[29, 40] == pytest.approx(dist[31, 40], abs=2e-5)


def test_colour_versions_share_the_pose_and_differ_in_colour():
    s = render_sample(sample_rng(0, "training", 2), SIZE, versions=4)
    hand = s.mask > 0
    grey = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(float) for im in s.images]
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(grey[a] - grey[b]).mean() > 5  # different backgrounds and colours
            # same shading on the hand, up to a colour transform
            assert np.corrcoef(grey[a][hand], grey[b][hand])[0, 1] > 0.8


def test_hand_stands_out_from_the_background(samples):
    for s in samples:
        img = s.images[0].astype(float)
        inner = cv2.erode(s.mask, np.ones((5, 5), np.uint8)) > 0
        outer = cv2.dilate(s.mask, np.ones((9, 9), np.uint8)) == 0
        assert np.linalg.norm(img[inner].mean(0) - img[outer].mean(0)) > 15


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, word", [
    (dict(n_train=0, n_eval=1), "n_train"), (dict(n_train=2, n_eval=-1), "n_eval"),
    (dict(n_train=2, n_eval=1, image_size=16), "image_size"), (dict(n_train=2.5, n_eval=1), "n_train"),
    (dict(n_train=2, n_eval=1, workers=0), "workers")])
def test_bad_arguments_raise_and_write_nothing(tmp_path, kwargs, word):
    with pytest.raises(TuneHandError, match=word):
        render_dataset(tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_untouched_or_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TuneHandError, match=re.escape(str(out))):
        render_dataset(out, 2, 1)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    render_dataset(out, 2, 1, with_mesh_files=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "training_K.json").exists()


def test_interrupt_leaves_nothing_behind(tmp_path):
    def stop(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_dataset(tmp_path / "out", 4, 1, progress=stop)
    assert list(tmp_path.iterdir()) == []


# -- preview and drawing --------------------------------------------------------------------------
def test_write_preview_grid(data, tmp_path):
    png = write_preview(data, tmp_path / "p.png", count=6)
    img = cv2.imread(str(png))
    assert img.shape == (2 * SIZE, 3 * SIZE, 3)
    png = write_preview(data, tmp_path / "e.png", count=16, split="evaluation")
    assert cv2.imread(str(png)).shape == (2 * SIZE, 2 * SIZE, 3)  # only 3 evaluation images
    with pytest.raises(TuneHandError):
        write_preview(tmp_path / "nothing", tmp_path / "x.png")


def test_bones_form_the_freihand_tree():
    assert len(BONES) == 20 and len(set(BONES)) == 20
    assert sorted(c for _, c in BONES) == list(range(1, 21))
    assert all(p < c for p, c in BONES)


def test_draw_skeleton_returns_a_drawn_copy():
    img = np.zeros((64, 64, 3), np.uint8)
    uv = np.stack([np.linspace(5, 58, 21), np.full(21, 30.25)], 1)
    out = draw_skeleton(img, uv)
    assert not img.any() and out.shape == img.shape
    assert out[30, 32].any() and not out[5, 5].any()
    one = draw_skeleton(img, uv, color=(0, 255, 0))
    assert one[..., 0].max() == 0 and one[..., 1].max() > 0


def test_contact_sheet_grid():
    tiles = [np.full((10, 12, 3), i, np.uint8) for i in range(5)]
    sheet = contact_sheet(tiles, cols=2)
    assert sheet.shape == (30, 24, 3)
    assert sheet[25, 5, 0] == 4 and sheet[25, 15, 0] == 0
