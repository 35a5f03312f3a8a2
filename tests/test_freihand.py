"""The FreiHAND reader on hand-written trees: layout, index mapping, split, ranges, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tune_hand.data.freihand import FreiHAND, coordinate_ranges, mean_root_mm, split_by_sample
from tune_hand.data.inspect import format_report, inspect_dataset
from tune_hand.errors import DataError


def _json(root: Path, name: str):
    return json.loads((root / name).read_text())


def _edit(root: Path, name: str, change) -> None:
    """Rewrite a JSON file through `change(data) -> data` (NaN and Infinity allowed, as Python writes them)."""
    (root / name).write_text(json.dumps(change(_json(root, name))))


def _set(data: list, index: tuple, value):
    target = data
    for i in index[:-1]:
        target = target[i]
    target[index[-1]] = value
    return data


# -- reading a good tree -----------------------------------------------------------------


def test_counts_shapes_and_flags(freihand_root):
    reader = FreiHAND(freihand_root)
    assert (reader.num_unique, reader.num_images, len(reader), reader.versions) == (5, 20, 20, 4)
    assert reader.K.shape == (5, 3, 3) and reader.xyz.shape == (5, 21, 3) and reader.scale.shape == (5,)
    assert reader.has_xyz and reader.optional == {"mano": False, "verts": False, "mask": False}
    sample = reader[13]
    assert sample.image.shape == (224, 224, 3) and sample.image.dtype == np.uint8
    assert sample.K.dtype == np.float64 and sample.xyz.shape == (21, 3)


def test_image_v_times_n_plus_k_uses_annotation_k(make_freihand, tmp_path):
    root = make_freihand(tmp_path / "fh", n_unique=7, versions=3, n_eval=0)
    reader = FreiHAND(root)
    K, xyz, scale = (np.array(_json(root, f"training_{f}.json")) for f in ("K", "xyz", "scale"))
    for v in range(3):
        for k in range(7):
            i = v * 7 + k
            sample = reader[i]
            assert (sample.index, sample.unique, reader.unique_index(i)) == (i, k, k)
            assert reader.image_path(i) == root / "training" / "rgb" / f"{i:08d}.jpg"
            np.testing.assert_array_equal(sample.K, K[k])  # exact round trip of the JSON values
            np.testing.assert_array_equal(sample.xyz, xyz[k])
            assert sample.scale == scale[k]
    assert not np.array_equal(reader[2].image, reader[9].image)  # two colour versions of annotation 2


def test_images_are_rgb(freihand_root):
    reader = FreiHAND(freihand_root)
    u, v = np.round(reader.K[0] @ reader.xyz[0, 0] / reader.xyz[0, 0, 2])[:2].astype(int)
    r, g, b = reader.read_image(0)[v, u].astype(int)  # the wrist dot is drawn as RGB (0, 255, 40)
    assert g > 200 and b > r + 15


@pytest.mark.parametrize("versions", [1, 2, 5])
def test_any_whole_number_of_versions(make_freihand, tmp_path, versions):
    reader = FreiHAND(make_freihand(tmp_path / "fh", n_unique=3, versions=versions, n_eval=0))
    assert (reader.num_images, reader.versions) == (3 * versions, versions)


def test_evaluation_with_and_without_ground_truth(make_freihand, tmp_path):
    with_gt = FreiHAND(make_freihand(tmp_path / "a", n_eval=4), "evaluation")
    assert (len(with_gt), with_gt.num_unique, with_gt.has_xyz) == (4, 4, True)
    assert with_gt[3].xyz.shape == (21, 3)
    without = FreiHAND(make_freihand(tmp_path / "b", n_eval=4, with_eval_xyz=False), "evaluation")
    assert without.xyz is None and not without.has_xyz and without[2].xyz is None


def test_optional_files_are_noted_not_required(freihand_root):
    (freihand_root / "training_mano.json").write_text("[]")
    (freihand_root / "training" / "mask").mkdir()
    reader = FreiHAND(freihand_root)
    assert reader.optional == {"mano": True, "verts": False, "mask": True}


def test_other_files_in_rgb_are_ignored(freihand_root):
    (freihand_root / "training" / "rgb" / ".DS_Store").write_text("")
    (freihand_root / "training" / "rgb" / "notes.txt").write_text("")
    assert len(FreiHAND(freihand_root)) == 20


def test_index_out_of_range(freihand_root):
    reader = FreiHAND(freihand_root)
    with pytest.raises(IndexError):
        reader[20]
    with pytest.raises(IndexError):
        reader.image_path(-1)


# -- bad inputs: one-line DataError naming the file and the entry ----------------------


def _remove(*parts):
    return lambda root: (root.joinpath(*parts).unlink() if root.joinpath(*parts).is_file()
                         else shutil.rmtree(root.joinpath(*parts)))


def _write(name, text):
    return lambda root: (root / name).write_text(text)


def _change(name, fn):
    return lambda root: _edit(root, name, fn)


def _add_image(index):
    return lambda root: shutil.copy(root / "training/rgb/00000000.jpg", root / f"training/rgb/{index:08d}.jpg")


def _clear_rgb(root):
    shutil.rmtree(root / "training/rgb")
    (root / "training/rgb").mkdir()


def _json_dir(root):
    (root / "training_scale.json").unlink()
    (root / "training_scale.json").mkdir()


BAD_TREES = {
    "no_K": (_remove("training_K.json"), ["training_K.json", "not a FreiHAND"]),
    "no_rgb": (_remove("training", "rgb"), ["training/rgb", "not a FreiHAND"]),
    "no_xyz": (_remove("training_xyz.json"), ["training_xyz.json", "missing"]),
    "no_scale": (_remove("training_scale.json"), ["training_scale.json", "missing"]),
    "bad_json": (_write("training_K.json", "[[1, 2"), ["training_K.json", "not valid JSON", "line 1"]),
    "not_utf8": (lambda r: (r / "training_xyz.json").write_bytes(b"\xff\xfe["),
                 ["training_xyz.json", "not valid JSON"]),
    "unreadable": (_json_dir, ["training_scale.json", "cannot read"]),
    "not_a_list": (_write("training_K.json", '{"K": []}'), ["training_K.json", "expected a list", "object"]),
    "empty": (_write("training_K.json", "[]"), ["training_K.json", "empty"]),
    "xyz_short": (_change("training_xyz.json", lambda d: d[:4]), ["training_xyz.json", "4 entries", "has 5"]),
    "scale_long": (_change("training_scale.json", lambda d: d + [0.03]), ["training_scale.json", "6 entries"]),
    "K_2x3": (_change("training_K.json", lambda d: _set(d, (2,), d[2][:2])), ["training_K.json", "entry 2",
                                                                               "shape (2, 3)"]),
    "xyz_20_joints": (_change("training_xyz.json", lambda d: _set(d, (3,), d[3][:20])),
                      ["training_xyz.json", "entry 3", "shape (20, 3)"]),
    "xyz_ragged": (_change("training_xyz.json", lambda d: _set(d, (1, 4), [0.1, 0.2])),
                   ["training_xyz.json", "entry 1", "ragged"]),
    "xyz_string": (_change("training_xyz.json", lambda d: _set(d, (2, 0, 1), "0.1")),
                   ["training_xyz.json", "entry 2", "numbers"]),
    "xyz_null": (_change("training_xyz.json", lambda d: _set(d, (4, 7, 2), None)),
                 ["training_xyz.json", "entry 4", "numbers"]),
    "K_nan": (_change("training_K.json", lambda d: _set(d, (1, 0, 0), float("nan"))),
              ["training_K.json", "entry 1", "non-finite"]),
    "xyz_inf": (_change("training_xyz.json", lambda d: _set(d, (4, 20, 0), float("inf"))),
                ["training_xyz.json", "entry 4", "non-finite"]),
    "scale_nan": (_change("training_scale.json", lambda d: _set(d, (0,), float("nan"))),
                  ["training_scale.json", "entry 0", "non-finite"]),
    "scale_negative": (_change("training_scale.json", lambda d: _set(d, (2,), -0.01)),
                       ["training_scale.json", "entry 2", "positive"]),
    "z_negative": (_change("training_xyz.json", lambda d: _set(d, (3, 5, 2), -0.1)),
                   ["training_xyz.json", "entry 3 joint 5", "z = -0.1"]),
    "z_zero": (_change("training_xyz.json", lambda d: _set(d, (0, 0, 2), 0.0)),
               ["training_xyz.json", "entry 0 joint 0", "in front of the camera"]),
    "K_last_row": (_change("training_K.json", lambda d: _set(d, (1, 2), [0.0, 0.0, 2.0])),
                   ["training_K.json", "entry 1", "last row"]),
    "K_negative_focal": (_change("training_K.json", lambda d: _set(d, (3, 1, 1), -400.0)),
                         ["training_K.json", "entry 3", "fy=-400"]),
    "last_image_missing": (_remove("training", "rgb", "00000019.jpg"),
                           ["training/rgb", "19 images", "00000018.jpg", "not a multiple", "5 annotations"]),
    "extra_image": (_add_image(20), ["training/rgb", "21 images", "not a multiple"]),
    "gap": (_remove("training", "rgb", "00000007.jpg"), ["training/rgb/00000007.jpg", "missing"]),
    "no_images": (_clear_rgb, ["training/rgb", "no images"]),
}


@pytest.mark.parametrize("name", list(BAD_TREES))
def test_bad_training_split_is_named(freihand_root, name):
    corrupt, expected = BAD_TREES[name]
    corrupt(freihand_root)
    with pytest.raises(DataError) as err:
        FreiHAND(freihand_root)
    message = str(err.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


BAD_EVALUATION = {
    "eval_image_missing": (_remove("evaluation", "rgb", "00000001.jpg"), ["evaluation/rgb/00000001.jpg", "missing"]),
    "eval_last_missing": (_remove("evaluation", "rgb", "00000002.jpg"),
                          ["evaluation/rgb/00000002.jpg", "missing", "evaluation_K.json has 3"]),
    "eval_extra_image": (lambda r: shutil.copy(r / "evaluation/rgb/00000000.jpg", r / "evaluation/rgb/00000003.jpg"),
                         ["evaluation/rgb", "4 images", "evaluation_K.json has 3"]),
    "eval_xyz_bad": (_change("evaluation_xyz.json", lambda d: _set(d, (1,), d[1][:3])),
                     ["evaluation_xyz.json", "entry 1", "shape (3, 3)"]),
    "eval_no_scale": (_remove("evaluation_scale.json"), ["evaluation_scale.json", "missing"]),
    "eval_no_K": (_remove("evaluation_K.json"), ["evaluation_K.json", "not a FreiHAND evaluation split"]),
}


@pytest.mark.parametrize("name", list(BAD_EVALUATION))
def test_bad_evaluation_split_is_named(freihand_root, name):
    corrupt, expected = BAD_EVALUATION[name]
    corrupt(freihand_root)
    with pytest.raises(DataError) as err:
        FreiHAND(freihand_root, "evaluation")
    for text in expected:
        assert text in str(err.value), f"{text!r} not in {str(err.value)!r}"


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="no such directory") as err:
        FreiHAND(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_unknown_split(freihand_root):
    with pytest.raises(DataError, match="split 'test'"):
        FreiHAND(freihand_root, "test")


def test_unreadable_image_is_named_when_read(freihand_root):
    (freihand_root / "training/rgb/00000003.jpg").write_bytes(b"not a jpeg")
    reader = FreiHAND(freihand_root)  # the listing is cheap; decoding happens on demand
    with pytest.raises(DataError, match=r"00000003\.jpg: unreadable"):
        reader[3]


def test_image_deleted_after_listing_is_named(freihand_root):
    reader = FreiHAND(freihand_root)
    (freihand_root / "training/rgb/00000004.jpg").unlink()
    with pytest.raises(DataError, match=r"00000004\.jpg: missing"):
        reader.read_image(4)


# -- split by unique sample --------------------------------------------------------------


@pytest.mark.parametrize("num_unique,versions,fraction", [(50, 4, 0.1), (7, 4, 0.3), (5, 1, 0.2), (1000, 2, 0.05)])
def test_split_keeps_all_versions_of_a_pose_together(num_unique, versions, fraction):
    n_images = num_unique * versions
    train, val = split_by_sample(n_images, num_unique, fraction, seed=0)
    assert len(np.intersect1d(train % num_unique, val % num_unique)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n_images))
    val_unique = np.unique(val % num_unique)
    assert len(val) == len(val_unique) * versions  # every version of a validation pose is in validation
    assert len(val_unique) == max(1, round(fraction * num_unique))


def test_split_is_deterministic_per_seed():
    a = split_by_sample(400, 100, 0.2, seed=3)
    b = split_by_sample(400, 100, 0.2, seed=3)
    c = split_by_sample(400, 100, 0.2, seed=4)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_zero_fraction_gives_empty_validation():
    train, val = split_by_sample(20, 5, 0.0, seed=0)
    assert len(val) == 0 and len(train) == 20


def test_split_rejects_a_count_that_is_not_a_multiple():
    with pytest.raises(ValueError, match="multiple"):
        split_by_sample(21, 5, 0.1, seed=0)


# -- coordinate ranges -------------------------------------------------------------------


def _two_hands() -> np.ndarray:
    xyz = np.zeros((2, 21, 3))
    xyz[0, :, 2], xyz[1, :, 2] = 0.5, 0.7
    xyz[0, 0] = [0.01, 0.02, 0.5]  # wrist of hand 0
    xyz[0, 8] = [0.11, -0.04, 0.45]
    xyz[1, 0] = [-0.02, 0.0, 0.7]  # wrist of hand 1
    xyz[1, 12] = [-0.1, 0.06, 0.8]
    return xyz


def test_camera_ranges_in_mm_with_margin():
    ranges = coordinate_ranges(_two_hands(), "camera", 0.0)
    np.testing.assert_allclose(ranges, [[-100.0, 110.0], [-40.0, 60.0], [450.0, 800.0]])
    wide = coordinate_ranges(_two_hands(), "camera", 0.1)
    np.testing.assert_allclose(wide, [[-121.0, 131.0], [-50.0, 70.0], [415.0, 835.0]])


def test_root_relative_ranges_subtract_the_wrist():
    ranges = coordinate_ranges(_two_hands(), "root_relative", 0.0)
    # hand 0 minus (10, 20, 500) mm; hand 1 minus (-20, 0, 700) mm
    np.testing.assert_allclose(ranges, [[-80.0, 100.0], [-60.0, 60.0], [-50.0, 100.0]])


def test_degenerate_axis_gets_a_one_millimetre_range():
    xyz = np.zeros((1, 21, 3))
    xyz[..., 2] = 0.5
    np.testing.assert_allclose(coordinate_ranges(xyz, "camera", 0.1)[2], [499.5, 500.5])


def test_mean_root():
    np.testing.assert_allclose(mean_root_mm(_two_hands()), [-5.0, 10.0, 600.0])


# -- inspect ------------------------------------------------------------------------------


def test_inspect_reports_counts_and_ranges(freihand_root):
    info = inspect_dataset(freihand_root)
    assert (info["unique_samples"], info["train_images"], info["versions_per_sample"]) == (5, 20, 4)
    assert (info["eval_images"], info["eval_has_xyz"], info["image_size"]) == (3, True, [224, 224])
    assert info["problems"] == []
    reader = FreiHAND(freihand_root)
    np.testing.assert_allclose(info["ranges_mm"]["camera"], coordinate_ranges(reader.xyz, "camera", 0.0), atol=0.05)
    assert 0.5 < info["depth_m"][0] < info["depth_m"][1] < 1.0
    json.dumps(info)  # JSON-ready for `tune-hand inspect --json`
    text = format_report(info)
    assert "20 images = 4 versions x 5 annotations" in text and "no problems found" in text


def test_inspect_lists_non_fatal_problems(make_freihand, tmp_path):
    root = make_freihand(tmp_path / "fh", n_eval=0, image_size=96)
    _edit(root, "training_xyz.json", lambda d: (np.array(d) * 1000).tolist())  # millimetres by mistake
    info = inspect_dataset(root)
    problems = " | ".join(info["problems"])
    assert "evaluation split missing" in problems
    assert "96x96" in problems
    assert "millimetres" in problems
    assert "problems:" in format_report(info)


def test_inspect_raises_on_fatal_problems(freihand_root):
    (freihand_root / "training_xyz.json").write_text("[")
    with pytest.raises(DataError, match="training_xyz.json"):
        inspect_dataset(freihand_root)


def test_inspect_reports_a_broken_evaluation_split(freihand_root):
    (freihand_root / "evaluation/rgb/00000001.jpg").unlink()
    info = inspect_dataset(freihand_root)
    assert any("evaluation split unusable" in p and "00000001.jpg" in p for p in info["problems"])


def test_reader_on_renderer_output(synth_data):
    """The renderer writes what the reader reads: counts, i mod N, and labels that land on the hand."""
    from tune_hand.data.inspect import inspect_dataset
    from tune_hand.geometry import project

    train = FreiHAND(synth_data, "training")
    assert (train.num_unique, len(train), train.versions) == (16, 64, 4)
    evaluation = FreiHAND(synth_data, "evaluation")
    assert len(evaluation) == 8 and evaluation.has_xyz
    for version in range(4):
        sample = train[version * train.num_unique + 3]
        assert sample.unique == 3
        np.testing.assert_array_equal(sample.xyz, train.xyz[3])
        uv = project(sample.K, sample.xyz)
        assert sample.image.shape == (224, 224, 3)
        assert np.all((uv > 0) & (uv < 223))
    info = inspect_dataset(synth_data)
    assert info["unique_samples"] == 16 and info["eval_has_xyz"] and not info["problems"]
