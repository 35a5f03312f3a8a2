"""The one front door that builds the model from a config, timm-style.

    model = build_model(cfg, ranges_mm=ranges, mean_root_mm=mean_root)  # ImageNet weights per cfg
    model = build_model(cfg, pretrained=False)  # random init, e.g. to load a checkpoint over it
    encoder = build_encoder(cfg.model, cfg.data.image_size)              # the encoder alone
    describe_model(cfg.model)                   # 'efficientnet-b4 C=128 N=4', for logs

Everything that makes a PoseNet goes through `build_model`, so a new way to build (weights,
a memory format, a compiled module) is one change here.
"""

from __future__ import annotations

import torch

from ..config import Config, ModelConfig
from .encoder import build_encoder, load_imagenet_weights
from .pose_net import PoseNet

__all__ = ["build_encoder", "build_model", "describe_model"]


def build_model(cfg: Config, ranges_mm: torch.Tensor | None = None, mean_root_mm: torch.Tensor | None = None,
                pretrained: bool | None = None) -> PoseNet:
    """A PoseNet for `cfg.model` at `cfg.data.image_size` x `cfg.data.image_size`.

    Args:
        cfg: the whole config (the model section, and the data section's image size).
        ranges_mm, mean_root_mm: the coordinate frame from the training data (see `PoseNet`);
            None leaves placeholders, for `set_frame` or a checkpoint's state_dict to fill.
        pretrained: load ImageNet weights into the encoder (from `model.weights` or the torch
            hub cache); None follows `cfg.model.pretrained`. Loading a checkpoint passes False,
            so no ImageNet file is needed: the checkpoint's weights replace them.

    Raises a one-line TuneHandError if the weights file is missing or foreign (see
    `encoder.load_imagenet_weights`).
    """
    model = PoseNet(cfg.model, cfg.data.image_size, ranges_mm=ranges_mm, mean_root_mm=mean_root_mm)
    if cfg.model.pretrained if pretrained is None else pretrained:
        load_imagenet_weights(model.encoder, cfg.model.weights)
    return model


def describe_model(cfg: ModelConfig) -> str:
    """One line naming the architecture: 'efficientnet-b0 C=128 N=4', plus any width/depth override."""
    scaling = "".join(f" {name}={value:g}" for name, value in (("width", cfg.width_coefficient),
                                                              ("depth", cfg.depth_coefficient))
                      if value is not None)
    return f"{cfg.encoder}{scaling} C={cfg.channels} N={cfg.blocks}"

