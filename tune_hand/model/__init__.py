"""The paper's model: EfficientNet encoder + 1D-heatmap decoder, built from a Config."""

from .build import build_encoder, build_model, describe_model
from .pose_net import PoseNet

__all__ = ["PoseNet", "build_encoder", "build_model", "describe_model"]
