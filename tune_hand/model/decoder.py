"""The 1D-heatmap decoder (paper section 3.3, as the authors' code settles it; DESIGN section 2).

    features (B, in, S, S)
      -> xy stack: N up-sampling blocks -> (B, C, H, H), H = S * 2**N
      -> z stack:  N up-sampling blocks -> (B, C, H, H)   (shared with xy when split_z=False)
    x logits = Conv1d(C, 21, 1)(xy.mean(dim=2))   rows averaged, indexed by column
    y logits = Conv1d(C, 21, 1)(xy.mean(dim=3))   columns averaged, indexed by row
    z logits = Conv1d(C, 21, 1)(z.mean(dim=2))
    1D soft-argmax over the H bins -> expected bin index per joint and axis.

An up-sampling block is conv -> ReLU -> BatchNorm2d. Block 0 is a full ConvTranspose2d
(in -> C); blocks 1..N-1 are "separable" (a depthwise ConvTranspose2d and a 1x1 Conv2d) or,
with separable=False, full C -> C transposed convs. The convs have no bias (BatchNorm
follows): with this, b4/C128/N4 has exactly the paper's 19,504,391 parameters.

Mapping bins to millimetres is the model's job (`bins_to_range`), since the range comes from
the data and travels in the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_JOINTS = 21


def up_conv(in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> nn.ConvTranspose2d:
    """A transposed conv that doubles H and W: k4 s2 p1 (authors' code) or k3 s2 p1 op1 (paper text)."""
    output_padding = 1 if kernel_size == 3 else 0
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=2, padding=1,
                              output_padding=output_padding, groups=groups, bias=False)


def separable_up_conv(channels: int, kernel_size: int, order: str) -> nn.Sequential:
    """Depthwise transposed conv + 1x1 conv; same parameters in either order.

    'depthwise_first' (the authors') runs the 1x1 at the doubled resolution; 'pointwise_first'
    runs it before up-sampling, at a quarter of the positions: ~83% of the decoder's MACs are
    these 1x1s at C128/N4, so this cuts the decoder from ~0.65 to ~0.24 GMACs at 224 px.
    """
    depthwise = up_conv(channels, channels, kernel_size, groups=channels)
    pointwise = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
    if order == "depthwise_first":
        return nn.Sequential(depthwise, pointwise)
    if order == "pointwise_first":
        return nn.Sequential(pointwise, depthwise)
    raise ValueError(f"separable_order={order!r}: must be depthwise_first or pointwise_first")


def up_block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.BatchNorm2d(channels))


def up_stack(in_channels: int, channels: int, blocks: int, kernel_size: int,
             separable: bool, separable_order: str) -> nn.Sequential:
    """N blocks, each doubling the resolution: (B, in, S, S) -> (B, C, S*2**N, S*2**N)."""
    layers = [up_block(up_conv(in_channels, channels, kernel_size), channels)]
    for _ in range(1, blocks):
        conv = (separable_up_conv(channels, kernel_size, separable_order) if separable
                else up_conv(channels, channels, kernel_size))
        layers.append(up_block(conv, channels))
    return nn.Sequential(*layers)


def soft_argmax_1d(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected bin index and probabilities of (B, J, H) logits; both float32.

    Computed in float32 even under autocast: with H = 112 bins, bf16 (8 bits of mantissa)
    would quantise the expectation to ~0.5 bin near the top of the range. softmax is on
    autocast's float32 list and mul/sum follow their (float32) inputs; a matmul would not.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    bins = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.float32)
    return (probs * bins).sum(dim=-1), probs


def bins_to_range(index: torch.Tensor, ranges: torch.Tensor, bins: int) -> torch.Tensor:
    """Map expected bin indices (..., 3) in [0, H-1] linearly onto per-axis ranges (3, 2).

    value = lo + index / (H - 1) * (hi - lo): bin 0 is `lo` and bin H-1 is `hi` exactly, so a
    prediction can reach both ends of the range and nothing outside it.
    """
    lo, hi = ranges[:, 0], ranges[:, 1]
    return lo + index / (bins - 1) * (hi - lo)


class HeatmapDecoder(nn.Module):
    """Encoder features (B, in, S, S) -> expected bin indices (B, 21, 3) and heatmaps.

    Args:
        in_channels: the encoder's output channels.
        channels: C, the width of every block.
        blocks: N; the heatmaps have H = S * 2**N bins.
        separable, separable_order, kernel_size: see `up_stack` / `separable_up_conv`.
        split_z: a separate stack for z (the paper); False reads z from the xy features.
    """

    def __init__(self, in_channels: int, channels: int = 128, blocks: int = 4, separable: bool = True,
                 separable_order: str = "depthwise_first", kernel_size: int = 4, split_z: bool = True,
                 joints: int = NUM_JOINTS):
        super().__init__()
        stack = dict(in_channels=in_channels, channels=channels, blocks=blocks, kernel_size=kernel_size,
                     separable=separable, separable_order=separable_order)
        self.xy_stack = up_stack(**stack)
        self.z_stack = up_stack(**stack) if split_z else None
        self.x_head = nn.Conv1d(channels, joints, kernel_size=1)
        self.y_head = nn.Conv1d(channels, joints, kernel_size=1)
        self.z_head = nn.Conv1d(channels, joints, kernel_size=1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (expected bin index (B, J, 3) float32, {"x", "y", "z"}: probabilities (B, J, H))."""
        xy = self.xy_stack(features)
        z = self.z_stack(features) if self.z_stack is not None else xy
        logits = {
            "x": self.x_head(xy.mean(dim=2)),  # average over rows: one value per column
            "y": self.y_head(xy.mean(dim=3)),  # average over columns: one value per row
            "z": self.z_head(z.mean(dim=2)),
        }
        index, heatmaps = {}, {}
        for axis, value in logits.items():
            index[axis], heatmaps[axis] = soft_argmax_1d(value)
        return torch.stack([index["x"], index["y"], index["z"]], dim=-1), heatmaps
