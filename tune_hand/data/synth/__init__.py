"""Synthetic FreiHAND: a procedural hand renderer that writes the official layout.

FreiHAND cannot be downloaded on the project's machines, so the demo, the tests and the
benchmarks run on this. Each unique sample is a random right hand (`hand_model`: size,
bone lengths, one of several pose families) under a random 3D orientation, 0.4-1.0 m
from a camera whose intrinsics K are realistic for a 224 px crop (fx ~ 430-670 px). The
hand is ray-cast as shaded volumes (round cones and ellipsoids, per-pixel depth buffer,
so occlusion is exact) at twice the resolution, then downsampled (anti-aliasing) and
composited over a textured background. The depth buffer and shading are computed once per
sample; the 4 training colour versions differ in skin tint, colour treatment and
background, as FreiHAND's do (version 0 is a green-screen studio shot).

Conventions (tune_hand.geometry): uv = (K @ xyz)[:2] / z with OpenCV pixel centres, so
the ray through the centre of column c, row r is K^-1 @ (c, r, 1), and every keypoint
written projects exactly where its joint was drawn.

One module per stage, in the order a sample is made:
    hand_model  skeleton, pose families, kinematics, pose variety
    volumes     the cones and ellipsoids drawn around the skeleton, with part labels
    scene       camera placement; skin, background and colour treatment per version
    render      ray casting, shading and compositing of one sample (`render_sample`)
    write       the dataset in the FreiHAND layout (`render_dataset`) and `write_preview`

    from tune_hand.data.synth import render_dataset
    render_dataset("data/synth", n_train=600, n_eval=200, seed=0)
"""

from .render import SUPERSAMPLE, TRAIN_VERSIONS, Buffers, Sample, raycast, render_sample
from .scene import DEPTH_RANGE, FILL_RANGE, FOCAL_RANGE, place_hand, random_rotation
from .write import JPEG_QUALITY, SPLITS, render_dataset, sample_rng, write_preview

__all__ = ["DEPTH_RANGE", "FILL_RANGE", "FOCAL_RANGE", "JPEG_QUALITY", "SPLITS", "SUPERSAMPLE", "TRAIN_VERSIONS",
           "Buffers", "Sample", "place_hand", "random_rotation", "raycast", "render_dataset", "render_sample",
           "sample_rng", "write_preview"]
