"""Drawing helpers: the 21-joint skeleton over an image, and contact sheets of images."""

from __future__ import annotations

import cv2
import numpy as np

# (parent, child) for the FreiHAND joint order: wrist, then thumb, index, middle, ring, little
# (base to tip), so bone b belongs to finger b // 4.
BONES: list[tuple[int, int]] = [(0 if k == 0 else 4 * f + k, 4 * f + k + 1) for f in range(5) for k in range(4)]

# One RGB colour per finger: thumb red, index orange/yellow, middle green, ring blue, little magenta.
FINGER_COLOURS: list[tuple[int, int, int]] = [(230, 40, 40), (250, 190, 30), (40, 200, 60),
                                              (40, 120, 240), (200, 60, 220)]
_SUBPIXEL = 4  # cv2 drawing with shift=4: coordinates in 1/16 pixel, so keypoints are not rounded


def draw_skeleton(image_rgb: np.ndarray, uv: np.ndarray, color=None, thickness: int = 1) -> np.ndarray:
    """A copy of `image_rgb` with the bones and joints of uv (21, 2) drawn (OpenCV pixel centres).

    `color` (an RGB tuple) draws everything in one colour; by default each finger has its own.
    """
    uv = np.asarray(uv, dtype=np.float64)
    if uv.shape != (21, 2) or not np.all(np.isfinite(uv)):
        raise ValueError(f"uv must be 21 finite (u, v) points, got shape {uv.shape}")
    out = np.ascontiguousarray(image_rgb).copy()
    pts = np.round(uv * (1 << _SUBPIXEL)).astype(np.int64)
    for b, (i, j) in enumerate(BONES):
        c = color or FINGER_COLOURS[b // 4]
        cv2.line(out, tuple(map(int, pts[i])), tuple(map(int, pts[j])), c, thickness, cv2.LINE_AA, _SUBPIXEL)
    radius = (thickness + 1) << _SUBPIXEL
    for k, p in enumerate(pts):
        c = color or ((255, 255, 255) if k == 0 else FINGER_COLOURS[(k - 1) // 4])
        cv2.circle(out, tuple(map(int, p)), radius, c, -1, cv2.LINE_AA, _SUBPIXEL)
    return out


def contact_sheet(images: list[np.ndarray], cols: int) -> np.ndarray:
    """Tile same-sized images row by row into a grid `cols` wide; empty cells are black."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"contact_sheet needs images of one shape, got {sorted(shapes)}")
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    h, w = images[0].shape[:2]
    sheet = np.zeros((rows * h, cols * w) + images[0].shape[2:], dtype=images[0].dtype)
    for n, im in enumerate(images):
        r, c = divmod(n, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return sheet
