"""The synthetic renderer's old module path, kept for the code, scripts and pickles that name it.

The renderer lives in `tune_hand.data.synth` (one module per stage); import from there.
Two private names stay too: tests drew orientations with `_orientation`, and
benchmarks/bench_renderer.py times the JPEG encoder alone with `_jpeg`.
"""

from .synth.render import SUPERSAMPLE, TRAIN_VERSIONS, Buffers, Sample, raycast, render_sample  # noqa: F401
from .synth.scene import DEPTH_RANGE, FILL_RANGE, FOCAL_RANGE, _orientation, place_hand, random_rotation  # noqa: F401
from .synth.write import JPEG_QUALITY, SPLITS, _jpeg, render_dataset, sample_rng, write_preview  # noqa: F401
