"""TensorBoard images of a run: validation predictions with bones drawn, and one sample's 1D heatmaps.

    if should_log_images(epoch, total, cfg.train.image_every):
        log_images(writer, trainer, epoch)

Used by `tune-hand train` (RUN/tb/) and by every sweep trial (its trial directory), so
`tensorboard --logdir EXPERIMENT` shows the whole sweep's scalars and pictures.
"""

from __future__ import annotations

import numpy as np
import torch

from .viz import contact_sheet, heatmap_image, prediction_tiles

IMAGES = 8  # validation images per grid


def should_log_images(epoch: int, total: int, every: int) -> bool:
    """The first epoch, every `every`-th, and the last; never when `every` is 0."""
    return every > 0 and (epoch == 1 or epoch % every == 0 or epoch == total)


@torch.no_grad()
def prediction_images(model, batch: dict, device: torch.device, n: int = IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """(a grid of n predictions over their images, the first image's heatmaps), both RGB uint8 HWC.

    Relative models do not predict where the hand is: root-relative hands are drawn at the true wrist,
    centroid-relative ones at the true centroid (at the training set's mean wrist / centroid where the
    split has no ground truth, which is then not drawn).
    """
    was_training = model.training
    model.eval()
    images = batch["image"][:n]
    pred, heatmaps = model.forward_with_heatmaps(images.to(device).float().div_(255.0))
    pred = model.to_camera(pred.float()).cpu().numpy().astype(np.float64)
    model.train(was_training)
    gt = batch["xyz_mm"][:n].numpy().astype(np.float64) if bool(batch["has_xyz"][:n].all()) else None
    if model.target == "root_relative" and gt is not None:
        pred = pred - pred[:, :1] + gt[:, :1]
    elif model.target == "centroid_relative" and gt is not None:
        pred = pred - pred.mean(axis=1, keepdims=True) + gt.mean(axis=1, keepdims=True)
    tiles = prediction_tiles(images.permute(0, 2, 3, 1).numpy(), batch["K"][:n].numpy(), pred, gt)
    heat = heatmap_image({axis: h[0].float().cpu().numpy() for axis, h in heatmaps.items()})
    return contact_sheet(tiles, cols=4), heat


def log_images(writer, trainer, epoch: int) -> bool:
    """Write the prediction grid and heatmaps of the first validation batch; False without validation."""
    if trainer.val_loader is None:
        return False
    batch = next(iter(trainer.val_loader))
    grid, heat = prediction_images(trainer.model, batch, trainer.device)
    writer.add_image("val/predictions", grid, epoch, dataformats="HWC")
    writer.add_image("val/heatmaps", heat, epoch, dataformats="HWC")
    return True
