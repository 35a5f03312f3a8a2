"""The paper's model: EfficientNet encoder + 1D-heatmap decoder, built from a Config."""

from .pose_net import PoseNet, build_model

__all__ = ["PoseNet", "build_model"]
