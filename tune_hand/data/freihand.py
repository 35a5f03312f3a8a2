"""Reader for the official FreiHAND layout (DESIGN section 3), and the split and ranges built on it.

    root/training_K.json        N 3x3 intrinsics
    root/training_xyz.json      N x 21 x 3 joints, camera frame, metres
    root/training_scale.json    N floats
    root/training/rgb/%08d.jpg  k * N images (k = 4 colour versions in the release); image i uses annotation i mod N
    root/evaluation_K.json, evaluation_scale.json, evaluation/rgb/%08d.jpg (N images), evaluation_xyz.json optional

N comes from the length of `<split>_K.json`, never from a constant. Everything cheap is checked when the
reader is built (JSON shapes and values, the image listing), so a bad dataset fails at once with a
one-line `DataError` naming the file and the entry, not hours into a trial. `training_mano.json`,
`training_verts.json` and `training/mask/` are optional: their presence is noted, they are never loaded
(the vertices file alone is hundreds of MB).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import TARGETS
from ..errors import DataError

SPLITS = ("training", "evaluation")
NUM_JOINTS = 21
MIN_IMAGE_SIDE = 32  # smaller images are refused: nothing of a hand is left to learn from
_IMAGE_NAME = re.compile(r"^(\d{8})\.jpg$")


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    K: np.ndarray  # (3, 3) float64
    xyz: np.ndarray | None  # (21, 3) float64, metres, camera frame; None without ground truth
    scale: float
    index: int  # image index
    unique: int  # annotation index = index mod N


class FreiHAND:
    """One split of a FreiHAND directory: annotations in memory, images read on demand.

        reader = FreiHAND("/data/FreiHAND_pub_v2", "training")
        sample = reader[3 * reader.num_unique + 7]   # the 4th colour version of annotation 7

    Attributes: K (N, 3, 3), xyz (N, 21, 3) metres or None, scale (N,), num_unique (N), num_images
    (k * N for training, N for evaluation), has_xyz, optional ({"mano", "verts", "mask"} -> present).
    Raises DataError at construction for anything wrong that is cheap to find.
    """

    def __init__(self, root: str | Path, split: str = "training"):
        if split not in SPLITS:
            raise DataError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.rgb_dir = self.root / split / "rgb"
        self._rgb_prefix = os.path.join(str(self.rgb_dir), "")  # read_image formats str paths: no Path per item
        _check_layout(self.root, split)

        k_path = self._file("K")
        self.K = _load_array(k_path, (3, 3), "camera intrinsics K")
        _check_intrinsics(self.K, k_path)
        self.num_unique = len(self.K)

        scale_path = self._file("scale")
        self.scale = _load_array(scale_path, (), "hand scale")
        _check_length(self.scale, scale_path, k_path, self.num_unique)
        _check_positive(self.scale, scale_path, "scale")

        xyz_path = self._file("xyz")
        self.has_xyz = split == "training" or xyz_path.exists()
        self.xyz: np.ndarray | None = None
        if self.has_xyz:
            self.xyz = _load_array(xyz_path, (NUM_JOINTS, 3), "21 joints x (x, y, z) in metres")
            _check_length(self.xyz, xyz_path, k_path, self.num_unique)
            _check_depth(self.xyz, xyz_path)

        self.num_images = _count_images(self.rgb_dir, self.num_unique, split, k_path)
        self.optional = {
            "mano": self._file("mano").is_file(),
            "verts": self._file("verts").is_file(),
            "mask": (self.root / split / "mask").is_dir(),
        }

    def _file(self, field: str) -> Path:
        return self.root / f"{self.split}_{field}.json"

    @property
    def versions(self) -> int:
        """Images per annotation: 4 colour versions for the released training split, 1 for evaluation."""
        return self.num_images // self.num_unique

    def __len__(self) -> int:
        return self.num_images

    def unique_index(self, i: int) -> int:
        return self._check_index(i) % self.num_unique

    def image_path(self, i: int) -> Path:
        return self.rgb_dir / f"{self._check_index(i):08d}.jpg"

    def read_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB, decoded straight to RGB (no BGR -> RGB pass). A missing, empty, truncated,
        corrupt or tiny image is a one-line DataError naming the file."""
        path = f"{self._rgb_prefix}{self._check_index(i):08d}.jpg"
        try:
            data = np.fromfile(path, np.uint8)  # then decode: as fast as cv2.imread, and the bytes are checked
        except FileNotFoundError:
            raise DataError(f"{path}: missing") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
        # A truncated JPEG decodes (grey below the cut) with a warning on stderr: refuse it before decoding.
        problem = jpeg_problem(len(data), data[:2].tobytes(), data[-32:].tobytes())
        image = None if problem else cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
        if image is None:
            problem = f"unreadable ({problem or 'corrupt JPEG: it does not decode'})"
        else:
            problem = image_size_problem(image.shape[1], image.shape[0])
        if problem:
            raise DataError(f"{path}: {problem}; replace it with an intact copy")
        return image

    def __getitem__(self, i: int) -> Sample:
        i = self._check_index(i)
        u = i % self.num_unique
        return Sample(
            image=self.read_image(i),
            K=self.K[u].copy(),
            xyz=None if self.xyz is None else self.xyz[u].copy(),
            scale=float(self.scale[u]),
            index=i,
            unique=u,
        )

    def _check_index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.num_images:
            raise IndexError(f"image index {i} out of range: {self.root / self.split} has {self.num_images} images")
        return i

    def __repr__(self) -> str:
        return (f"FreiHAND({str(self.root)!r}, {self.split!r}: {self.num_images} images, "
                f"{self.num_unique} annotations, has_xyz={self.has_xyz})")


def jpeg_problem(size: int, head: bytes, tail: bytes) -> str | None:
    """What is wrong with a JPEG file of `size` bytes that starts with `head` (2+ bytes) and ends with `tail`,
    from its markers alone (start of image FFD8, end of image FFD9; zero padding after it is allowed)."""
    if size == 0:
        return "empty file, 0 bytes"
    if not head.startswith(b"\xff\xd8"):
        return "not a JPEG image"
    if not tail.rstrip(b"\0").endswith(b"\xff\xd9"):
        return "truncated JPEG: no end-of-image marker"
    return None


def image_size_problem(width: int, height: int) -> str | None:
    if min(width, height) < MIN_IMAGE_SIDE:
        return f"{width}x{height} pixels, too small for a hand image (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE})"
    return None


# -- split and coordinate ranges ---------------------------------------------------------


def split_by_sample(num_images: int, num_unique: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation IMAGE indices (sorted int64), split by unique sample.

    All colour versions of one pose (images u, u + N, u + 2N, ...) fall on the same side: splitting by
    image would put the same hand pose in both sets and leak. The validation side gets
    round(val_fraction * N) annotations, at least one when val_fraction > 0, and never all of them.
    val_fraction = 0 gives an empty validation set.
    """
    if num_unique < 1 or num_images < num_unique or num_images % num_unique:
        raise ValueError(f"num_images={num_images} must be a positive multiple of num_unique={num_unique}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1)")
    n_val = int(round(val_fraction * num_unique))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    n_val = min(n_val, num_unique - 1)
    order = np.random.default_rng(seed).permutation(num_unique)
    is_val = np.zeros(num_unique, dtype=bool)
    is_val[order[:n_val]] = True
    versions = num_images // num_unique
    image_is_val = np.tile(is_val, versions)  # image i -> annotation i mod N
    return np.flatnonzero(~image_is_val).astype(np.int64), np.flatnonzero(image_is_val).astype(np.int64)


def target_points_mm(xyz_m: np.ndarray, target: str) -> np.ndarray:
    """The model's targets in mm (..., 21, 3): camera-frame points, points minus the wrist (joint 0),
    or points minus the centroid of the 21 joints."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: must be one of {', '.join(TARGETS)}")
    xyz = np.asarray(xyz_m, dtype=np.float64)
    if target == "root_relative":
        xyz = xyz - xyz[..., :1, :]
    elif target == "centroid_relative":
        xyz = xyz - xyz.mean(axis=-2, keepdims=True)
    return xyz * 1000.0


def coordinate_ranges(xyz_m: np.ndarray, target: str, margin: float) -> np.ndarray:
    """(3, 2) float64 [[xmin, xmax], [ymin, ymax], [zmin, zmax]] in mm of the training targets.

    Each axis is widened by margin * span on both sides, so validation hands slightly outside the training
    extremes still fall inside the heatmap. An axis with no spread at all (a degenerate training set) is
    widened to 1 mm, so the linear bin <-> mm mapping never divides by zero.
    """
    pts = target_points_mm(xyz_m, target).reshape(-1, 3)
    if len(pts) == 0:
        raise DataError("coordinate_ranges: no training points")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = margin * (hi - lo)
    lo, hi = lo - pad, hi + pad
    flat = hi - lo < 1e-6
    lo, hi = np.where(flat, lo - 0.5, lo), np.where(flat, hi + 0.5, hi)
    return np.stack([lo, hi], axis=1)


def mean_root_mm(xyz_m: np.ndarray, target: str = "root_relative") -> np.ndarray:
    """(3,) mean in mm of the point a relative target is measured from: the wrist (root_relative, and
    camera, whose models never use it) or the 21-joint centroid (centroid_relative). `PoseNet.to_camera`
    places relative predictions there for unaligned metrics and submissions."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r}: must be one of {', '.join(TARGETS)}")
    xyz = np.asarray(xyz_m, dtype=np.float64)
    origin = xyz.mean(axis=1) if target == "centroid_relative" else xyz[:, 0]
    return origin.mean(axis=0) * 1000.0


# -- validation helpers ------------------------------------------------------------------


def _check_layout(root: Path, split: str) -> None:
    if not root.is_dir():
        raise DataError(f"{root}: no such directory (expected a FreiHAND root holding {split}_K.json and {split}/rgb/)")
    need = [f"{split}_K.json", f"{split}/rgb/"]
    missing = [name for name in need if not (root / name).exists()]
    if missing:
        raise DataError(f"{root}: not a FreiHAND {split} split: missing {' and '.join(missing)} "
                        f"(the official layout has {split}_K.json, {split}_scale.json and {split}/rgb/%08d.jpg)")


def _load_json(path: Path):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: missing (part of the FreiHAND layout)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to be FreiHAND annotations") from None


def _load_array(path: Path, item_shape: tuple[int, ...], what: str) -> np.ndarray:
    """A float64 array (N, *item_shape) from a JSON list; the first bad entry is named on failure."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list with one entry per sample ({what}), got a JSON {_json_type(data)}")
    if not data:
        raise DataError(f"{path}: empty list; expected one entry per sample ({what})")
    try:
        arr = np.asarray(data)
    except ValueError:  # ragged
        arr = None
    if arr is not None and item_shape == () and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]  # scales stored as [[s], [s], ...]
    if arr is None or arr.shape[1:] != item_shape or arr.dtype.kind not in "iuf":
        i, found = _first_bad_entry(data, item_shape)
        expected = "a single number" if item_shape == () else f"shape {item_shape}"
        raise DataError(f"{path}: entry {i} {found}; expected {expected} ({what})")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: entry {int(np.argmax(bad))} has non-finite values (NaN or infinity)")
    return arr


def _first_bad_entry(data: list, item_shape: tuple[int, ...]) -> tuple[int, str]:
    """Only on the error path: find which entry broke the array, and how."""
    for i, entry in enumerate(data):
        try:
            a = np.asarray(entry)
        except ValueError:
            return i, "is ragged (rows of different lengths)"
        if item_shape == () and a.shape == (1,):
            a = a[0]
        if a.shape != item_shape:
            return i, f"has shape {a.shape}"
        if a.dtype.kind not in "iuf":
            return i, "holds something other than numbers"
    return 0, "does not form a regular array with the other entries"


def _json_type(value) -> str:
    return {dict: "object", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _check_length(arr: np.ndarray, path: Path, k_path: Path, n: int) -> None:
    if len(arr) != n:
        raise DataError(f"{path}: {len(arr)} entries, but {k_path.name} has {n}; the annotation files must agree")


def _check_intrinsics(K: np.ndarray, path: Path) -> None:
    bad_row = np.abs(K[:, 2] - [0.0, 0.0, 1.0]).max(axis=1) > 1e-6
    if bad_row.any():
        i = int(np.argmax(bad_row))
        raise DataError(f"{path}: entry {i} has last row {K[i, 2].tolist()}; expected [0, 0, 1]")
    bad_focal = (K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0)
    if bad_focal.any():
        i = int(np.argmax(bad_focal))
        raise DataError(f"{path}: entry {i} has focal lengths fx={K[i, 0, 0]:g}, fy={K[i, 1, 1]:g}; "
                        "both must be positive")


def _check_positive(values: np.ndarray, path: Path, what: str) -> None:
    bad = values <= 0
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: entry {i} has {what} {values[i]:g}; it must be positive")


MAX_JOINT_M = 1000.0  # a hand photographed from over 1 km: not FreiHAND (labels in mm are `inspect`'s hint)


def _check_depth(xyz: np.ndarray, path: Path) -> None:
    bad = xyz[..., 2] <= 0
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{path}: entry {i} joint {j} has z = {xyz[i, j, 2]:g} m; joints must lie in front of the "
                        "camera (z > 0, camera frame, metres)")
    far = np.abs(xyz).max(axis=-1) > MAX_JOINT_M
    if far.any():
        i, j = (int(v) for v in np.argwhere(far)[0])
        raise DataError(f"{path}: entry {i} joint {j} is at {xyz[i, j].tolist()} m, over {MAX_JOINT_M:g} m from the "
                        "camera; the labels must be in metres (camera frame)")


def _count_images(rgb_dir: Path, n: int, split: str, k_path: Path) -> int:
    """Number of images, from one listing of the rgb directory; names the first missing file."""
    try:
        with os.scandir(rgb_dir) as entries:
            found = [int(m.group(1)) for e in entries if (m := _IMAGE_NAME.match(e.name))]
    except OSError as e:
        raise DataError(f"{rgb_dir}: cannot list ({e.strerror})") from None
    if not found:
        raise DataError(f"{rgb_dir}: no images (expected %08d.jpg files, {n} per colour version)")
    idx = np.asarray(found)
    top = int(idx.max()) + 1
    present = np.zeros(top, dtype=bool)
    present[idx] = True
    if not present.all():
        first = int(np.argmin(present))
        raise DataError(f"{rgb_dir / f'{first:08d}.jpg'}: missing ({len(found)} images found, numbered up to "
                        f"{top - 1:08d}.jpg)")
    if split == "evaluation" and top > n:
        raise DataError(f"{rgb_dir}: {top} images, but {k_path.name} has {n} entries; the evaluation split has "
                        "one image per annotation")
    if split == "evaluation" and top < n:
        raise DataError(f"{rgb_dir / f'{top:08d}.jpg'}: missing ({top} images found, but {k_path.name} has {n} "
                        "entries, one per image)")
    if top % n:
        raise DataError(f"{rgb_dir}: {top} images (00000000..{top - 1:08d}.jpg) is not a multiple of the {n} "
                        f"annotations in {k_path.name}; every annotation needs the same number of colour versions "
                        f"(image i uses annotation i mod {n}; 4 versions in the release)")
    return top
