"""Parameter and multiply-add counts of a config's model, without weights or a real forward.

    info = model_info(cfg)            # b4/C128/N4: 19,504,391 params, ~2.11 GMACs at 224 px
    print(format_info(info))

The model is built on the meta device (no memory, no ImageNet file) and run once under
`torch.utils.flop_counter.FlopCounterMode`. MACs = counted FLOPs / 2. The counter counts
matrix multiplies and convolutions (aten.mm/addmm/bmm/baddbmm and aten.convolution,
transposed and grouped included); it does not count elementwise work (BatchNorm,
activations, squeeze-excitation gating, means, softmax), which is small here.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import Config
from .build import build_model
from .encoder import UNUSED_PREFIXES

NOTE = ("The paper's 19.5M (b4) / 5.4M (b0) count efficientnet-pytorch's conv_head and its "
        "BatchNorm (0.81M for b4, 0.41M for b0), which are built (so ImageNet weights load "
        "strictly) but never run: the decoder reads the last MBConv block. params_used excludes them.")


def model_info(cfg: Config, image_size: int = 224) -> dict:
    """Counts for `cfg.model` at `image_size` x `image_size`, batch 1 (cfg.data.image_size is ignored).

    Keys: params_total, params_encoder (incl. the unused conv_head), params_decoder,
    params_unused, params_used, macs, macs_encoder, macs_decoder, heatmap_bins, encoder,
    image_size, note.
    """
    sized = cfg.copy()
    sized.data.image_size = image_size
    with torch.device("meta"):
        model = build_model(sized, pretrained=False).eval()

    def count(module: torch.nn.Module, prefix_filter=None) -> int:
        return sum(p.numel() for name, p in module.named_parameters()
                   if prefix_filter is None or prefix_filter(name))

    params_encoder = count(model.encoder)
    params_unused = count(model.encoder, lambda n: n.startswith(UNUSED_PREFIXES))
    params_total = count(model)

    images = torch.empty(1, 3, image_size, image_size, device="meta")
    with torch.no_grad():
        macs_encoder, features = _macs(model.encoder, images)
        macs_decoder, _ = _macs(model.decoder, features)
    return {
        "encoder": cfg.model.encoder,
        "image_size": image_size,
        "heatmap_bins": model.heatmap_bins,
        "params_total": params_total,
        "params_encoder": params_encoder,
        "params_decoder": count(model.decoder),
        "params_unused": params_unused,
        "params_used": params_total - params_unused,
        "macs": macs_encoder + macs_decoder,
        "macs_encoder": macs_encoder,
        "macs_decoder": macs_decoder,
        "note": NOTE,
    }


def _macs(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    with FlopCounterMode(display=False) as counter:
        out = module(x)
    return counter.get_total_flops() // 2, out


def format_info(info: dict) -> str:
    """A few human-readable lines."""
    m, g = 1e6, 1e9
    return "\n".join([
        f"encoder   {info['encoder']}, {info['image_size']}x{info['image_size']} input, "
        f"{info['heatmap_bins']} heatmap bins",
        f"params    {info['params_total'] / m:.2f}M total = encoder {info['params_encoder'] / m:.2f}M "
        f"+ decoder {info['params_decoder'] / m:.2f}M; {info['params_used'] / m:.2f}M used "
        f"({info['params_unused'] / m:.2f}M unused conv_head)",
        f"MACs      {info['macs'] / g:.2f}G = encoder {info['macs_encoder'] / g:.2f}G "
        f"+ decoder {info['macs_decoder'] / g:.2f}G (batch 1)",
        f"note      {info['note']}",
    ])
