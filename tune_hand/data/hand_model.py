"""The synthetic hand's old module path, kept for the code, scripts and pickles that name it.

The kinematic hand is `tune_hand.data.synth.hand_model`; the volumes drawn around it are
`tune_hand.data.synth.volumes`. This module re-exports both.
"""

from .synth.hand_model import (ABDUCTION_LIMIT, FAMILIES, FINGER_JOINTS, FINGER_LIMITS, FINGERS,  # noqa: F401
                               NUM_JOINTS, THUMB_LIMITS, HandPose, HandShape, forearm_direction, joints,
                               pose_variety_mm, sample_hand, sample_pose, sample_pose_joints, sample_shape,
                               similarity_align)
from .synth.volumes import (FOREARM, INDEX, LITTLE, MIDDLE, PALM, RING, SLEEVE, THUMB, Volumes,  # noqa: F401
                            hand_volumes, surface_points)
