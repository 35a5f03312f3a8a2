"""PoseNet: the model. Images in [0, 1] -> 21 3D keypoints in mm.

    model = build_model(cfg, ranges_mm=ranges, mean_root_mm=mean_root)   # tune_hand.model.build
    pred = model(images)                  # (B, 21, 3) mm in cfg.model.target's frame
    xyz = model.to_camera(pred)           # camera frame, for unaligned metrics and submissions

Everything a checkpoint needs to reproduce predictions is a buffer in the state_dict: the
per-axis heatmap ranges, the training set's mean wrist (for root-relative targets) and the
input normalisation. So evaluation rebuilds it with `build_model(cfg, pretrained=False)` (random
init, no ImageNet file needed) and loads the checkpoint's state_dict over it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .decoder import NUM_JOINTS, HeatmapDecoder, bins_to_range
from .encoder import build_encoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PoseNet(nn.Module):
    """EfficientNet encoder + 1D-heatmap decoder with the coordinate frame as buffers.

    Args:
        cfg: the model section of the config.
        image_size: input size S (a multiple of 32); heatmaps have (S / 32) * 2**N bins.
        ranges_mm: (3, 2) per-axis (lo, hi) that heatmap bins 0 and H-1 map to, in the target
            frame; None gives a [-1, 1] placeholder to be set from the training data
            (`set_frame`) before training.
        mean_root_mm: (3,) the training set's mean origin of the target frame in the camera
            frame (the wrist for root_relative, the 21-joint centroid for centroid_relative);
            `to_camera` adds it to relative predictions. None gives zeros.
    """

    def __init__(self, cfg: ModelConfig, image_size: int, ranges_mm: torch.Tensor | None = None,
                 mean_root_mm: torch.Tensor | None = None):
        super().__init__()
        self.target = cfg.target
        self.image_size = image_size
        self.heatmap_bins = (image_size // 32) * 2**cfg.blocks
        self.encoder = build_encoder(cfg, image_size)
        self.decoder = HeatmapDecoder(self.encoder.out_channels, channels=cfg.channels, blocks=cfg.blocks,
                                      separable=cfg.separable, separable_order=cfg.separable_order,
                                      kernel_size=cfg.kernel_size, split_z=cfg.split_z)
        if cfg.normalize == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif cfg.normalize == "none":  # the authors fed [0, 1] RGB as is
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:
            raise ConfigError(f"model.normalize={cfg.normalize!r}: must be imagenet or none")
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("ranges_mm", torch.tensor([[-1.0, 1.0]] * 3, dtype=torch.float32))
        self.register_buffer("mean_root_mm", torch.zeros(3, dtype=torch.float32))
        self.set_frame(ranges_mm, mean_root_mm)

    @torch.no_grad()
    def set_frame(self, ranges_mm: torch.Tensor | None = None, mean_root_mm: torch.Tensor | None = None) -> None:
        """Set the heatmap ranges (3, 2) and/or the mean origin (3,): wrist or centroid, from the training data."""
        if ranges_mm is not None:
            ranges = torch.as_tensor(ranges_mm, dtype=torch.float32)
            if ranges.shape != (3, 2) or not torch.isfinite(ranges).all() or not (ranges[:, 0] < ranges[:, 1]).all():
                raise ValueError(f"ranges_mm must be finite (3, 2) rows of (lo, hi) with lo < hi, got "
                                 f"{ranges.tolist() if ranges.numel() <= 6 else tuple(ranges.shape)}")
            self.ranges_mm.copy_(ranges)
        if mean_root_mm is not None:
            root = torch.as_tensor(mean_root_mm, dtype=torch.float32)
            if root.shape != (3,) or not torch.isfinite(root).all():
                raise ValueError(f"mean_root_mm must be a finite (3,) vector, got shape {tuple(root.shape)}")
            self.mean_root_mm.copy_(root)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float images in [0, 1], any memory format -> (B, 21, 3) float32 mm."""
        return self.forward_with_heatmaps(images)[0]

    def forward_with_heatmaps(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Points (B, 21, 3) mm and the heatmaps {"x", "y", "z"}: softmax probabilities (B, 21, H)."""
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected images (B, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(images.shape)}")
        x = (images - self.input_mean) / self.input_std
        index, heatmaps = self.decoder(self.encoder(x))
        return bins_to_range(index, self.ranges_mm, self.heatmap_bins), heatmaps

    def to_camera(self, pred: torch.Tensor) -> torch.Tensor:
        """Predictions (..., 21, 3) in the target frame -> camera-frame mm.

        Identity for 'camera'. For 'root_relative' it adds the TRAINING SET's mean wrist, for
        'centroid_relative' its mean 21-joint centroid (both held in the `mean_root_mm` buffer):
        the model never sees where the hand is, so unaligned metrics (mpjpe) and submission
        files made from relative models carry that constant guess. Aligned metrics
        (pa_mpjpe, FreiHAND-aligned, AUC) are unaffected by the translation.
        """
        if pred.shape[-2:] != (NUM_JOINTS, 3):
            raise ValueError(f"expected predictions (..., {NUM_JOINTS}, 3), got {tuple(pred.shape)}")
        if self.target == "camera":
            return pred
        return pred + self.mean_root_mm.to(device=pred.device, dtype=pred.dtype)
