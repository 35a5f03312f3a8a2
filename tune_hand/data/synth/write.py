"""The dataset: render unique samples in any order or process and write the FreiHAND layout.

Also `write_preview`, a contact sheet read back from the written files, which checks the
layout end to end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ...errors import DataError, TuneHandError
from ...geometry import project
from ...io import atomic_directory, atomic_write_bytes
from .render import TRAIN_VERSIONS, render_sample

JPEG_QUALITY = 90
SPLITS = {"training": 0, "evaluation": 1}


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
    from ...viz import contact_sheet, draw_skeleton

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
