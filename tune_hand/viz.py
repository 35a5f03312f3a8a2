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


def prediction_tiles(images_rgb: np.ndarray, K: np.ndarray, pred_mm: np.ndarray, gt_mm: np.ndarray | None = None,
                     scale: int = 3) -> list[np.ndarray]:
    """One tile per image: the ground truth in white (when given) under the prediction in finger colours.

    images_rgb (B, S, S, 3) uint8, K (B, 3, 3) for those images, points (B, 21, 3) camera-frame mm.
    Tiles are `scale` times larger than the images (linear upsampling) so the bones stay legible.
    """
    from .geometry import project

    tiles = []
    for b, image in enumerate(images_rgb):
        size = image.shape[0] * scale
        tile = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_LINEAR)
        for xyz, colour in ((None if gt_mm is None else gt_mm[b], (255, 255, 255)), (pred_mm[b], None)):
            if xyz is None:
                continue
            uv = (project(K[b], xyz / 1000.0) + 0.5) * scale - 0.5  # pixel centres scale about the corner
            if np.all(np.isfinite(uv)):
                tile = draw_skeleton(tile, uv, color=colour, thickness=1 if colour else 2)
        tiles.append(tile)
    return tiles


def heatmap_image(heatmaps: dict[str, np.ndarray], row_height: int = 4, bin_width: int = 6) -> np.ndarray:
    """The 1D heatmaps of one sample, {"x", "y", "z"}: (21, H) probabilities, as one RGB image:
    three panels (x, y, z) of 21 rows (joints) by H bins, each row scaled to its own maximum."""
    panels = []
    for axis in ("x", "y", "z"):
        h = np.asarray(heatmaps[axis], dtype=np.float64)
        h = h / np.maximum(h.max(axis=1, keepdims=True), 1e-12)
        img = cv2.resize((h * 255).astype(np.uint8), (h.shape[1] * bin_width, h.shape[0] * row_height),
                         interpolation=cv2.INTER_NEAREST)
        img = cv2.cvtColor(cv2.applyColorMap(img, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
        label = np.zeros((img.shape[0], 18, 3), np.uint8)
        cv2.putText(label, axis, (3, img.shape[0] // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        panels.append(np.concatenate([label, img], axis=1))
        panels.append(np.full((3, img.shape[1] + 18, 3), 255, np.uint8))
    return np.concatenate(panels[:-1], axis=0)
