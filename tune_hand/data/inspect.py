"""`tune-hand inspect DATA`: what a FreiHAND directory holds, and what looks wrong with it.

Fatal problems (no training split, broken annotations, missing images, a training image that is empty,
truncated, not a JPEG or tiny) raise `DataError` naming the file. Every image's header is read (its frame
size and end marker: a few hundred bytes a file, no decoding). Findings a run can live with (no evaluation split, images not 224x224, joints far outside the
image) are listed under "problems" so a user sees them before spending GPU hours.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..geometry import project
from .freihand import FreiHAND, coordinate_ranges, image_size_problem, jpeg_problem

RELEASE_IMAGE_SIZE = 224
_OUTSIDE_TOLERANCE = 0.05  # fraction of joints projecting outside the image before it is reported


def inspect_dataset(root: str | Path) -> dict:
    """A JSON-ready summary of the training and evaluation splits under `root`."""
    root = Path(root)
    train = FreiHAND(root, "training")
    problems: list[str] = []
    (width, height), mixed = _check_images(train)
    problems += [f"training images differ in size: {mixed}"] if mixed else []
    if (height, width) != (RELEASE_IMAGE_SIZE, RELEASE_IMAGE_SIZE):
        problems.append(f"training images are {width}x{height}, not {RELEASE_IMAGE_SIZE}x{RELEASE_IMAGE_SIZE} "
                        "like the release" + ("" if height == width else "; augmentation needs square images"))
    problems += _plausibility(train, width, height)

    eval_images, eval_has_xyz = 0, False
    if not (root / "evaluation_K.json").exists() and not (root / "evaluation").exists():
        problems.append("evaluation split missing (evaluation_K.json, evaluation/rgb/): no benchmark submission "
                        "possible, validation comes from the training split only")
    else:
        try:
            evaluation = FreiHAND(root, "evaluation")
            eval_images, eval_has_xyz = evaluation.num_images, evaluation.has_xyz
            _, mixed = _check_images(evaluation)
            problems += [f"evaluation images differ in size: {mixed}"] if mixed else []
        except DataError as e:  # training still works; say what is wrong with the evaluation split
            problems.append(f"evaluation split unusable: {e}")

    xyz = train.xyz
    return {
        "dir": str(root.resolve()),
        "unique_samples": train.num_unique,
        "train_images": train.num_images,
        "versions_per_sample": train.versions,
        "eval_images": eval_images,
        "eval_has_xyz": eval_has_xyz,
        "image_size": [height, width],
        "ranges_mm": {t: coordinate_ranges(xyz, t, 0.0).round(1).tolist() for t in ("camera", "root_relative")},
        "depth_m": [float(xyz[..., 2].min()), float(xyz[..., 2].max())],
        "scale": [float(train.scale.min()), float(train.scale.max())],
        "optional_files": train.optional,
        "problems": problems,
    }


def _check_images(reader: FreiHAND) -> tuple[tuple[int, int], str | None]:
    """((width, height) of image 0, the first image of another size or None), from every image's header; a
    DataError names the first bad file (empty, truncated, not a JPEG, tiny)."""
    first, mixed = None, None
    for i in range(len(reader)):
        size = jpeg_size(reader.image_path(i))
        first = first or size
        if size != first and mixed is None:
            mixed = f"{reader.image_path(i)} is {size[0]}x{size[1]}, image 0 {first[0]}x{first[1]}"
    return first, mixed


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers


def jpeg_size(path: Path) -> tuple[int, int]:
    """(width, height) of a JPEG from its frame header, checking its start and end markers, without decoding
    it; anything wrong is a one-line DataError naming the file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(2)
            f.seek(max(size - 32, 0))
            problem = jpeg_problem(size, head, f.read())
            if problem is None:
                f.seek(2)
                frame = _frame_size(f)
                problem = "corrupt JPEG: no frame header" if frame is None else None
            problem = f"unreadable ({problem})" if problem else image_size_problem(*frame)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if problem:
        raise DataError(f"{path}: {problem}; replace it with an intact copy")
    return frame


def _frame_size(f) -> tuple[int, int] | None:
    """Walk the marker segments after SOI to the first SOF; None if the scan (or the end) comes first."""
    while True:
        byte = f.read(1)
        if byte != b"\xff":
            return None  # segments follow one another; anything else is corrupt
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):
            return None
        if marker[0] == 0x01 or 0xD0 <= marker[0] <= 0xD7:  # markers without a length
            continue
        length = int.from_bytes(f.read(2), "big")
        if marker[0] in _SOF:
            frame = f.read(5)  # precision, height, width
            if len(frame) < 5:
                return None
            return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
        if length < 2:
            return None
        f.seek(length - 2, 1)


def _plausibility(train: FreiHAND, width: int, height: int) -> list[str]:
    """Cheap checks that K and xyz belong together and use the released units."""
    problems = []
    depth = float(np.median(train.xyz[..., 2]))
    if depth > 10.0:
        problems.append(f"median joint depth is {depth:g}: training_xyz.json looks like millimetres; "
                        "FreiHAND stores metres")
    uv = project(train.K, train.xyz)
    outside = (uv[..., 0] < -0.5) | (uv[..., 0] > width - 0.5) | (uv[..., 1] < -0.5) | (uv[..., 1] > height - 0.5)
    if outside.mean() > _OUTSIDE_TOLERANCE:
        first = int(np.argmax(outside.any(axis=1)))
        problems.append(f"{outside.mean():.0%} of joints project outside the {width}x{height} image (first: "
                        f"annotation {first}); K and xyz may not belong together")
    return problems


def format_report(info: dict) -> str:
    """The summary as text for a terminal."""
    names = {"camera": "camera", "root_relative": "root-relative"}
    lines = [
        f"FreiHAND directory {info['dir']}",
        f"  training:   {info['train_images']} images = {info['versions_per_sample']} versions x "
        f"{info['unique_samples']} annotations",
        f"  evaluation: {info['eval_images']} images, "
        + ("with ground truth" if info["eval_has_xyz"] else "no ground truth"),
        f"  image size: {info['image_size'][1]}x{info['image_size'][0]}",
        f"  depth:      {info['depth_m'][0]:.3f} .. {info['depth_m'][1]:.3f} m",
        "  ranges (mm, no margin):",
    ]
    for target, ranges in info["ranges_mm"].items():
        axes = "  ".join(f"{axis} {lo:.1f}..{hi:.1f}" for axis, (lo, hi) in zip("xyz", ranges))
        lines.append(f"    {names.get(target, target):<14}{axes}")
    present = [name for name, there in info["optional_files"].items() if there]
    lines.append(f"  optional:   {', '.join(present) if present else 'none'} (mano, verts, mask)")
    if info["problems"]:
        lines.append("problems:")
        lines += [f"  - {p}" for p in info["problems"]]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
