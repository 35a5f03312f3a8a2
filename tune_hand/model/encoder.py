"""The EfficientNet encoder: lukemelas' efficientnet-pytorch up to its last MBConv block.

The decoder reads the output of the LAST MBConv block (b4: 448 channels, b0: 320, at
image_size / 32), as the authors' code does, not the 1x1 `conv_head` after it. We still
build `_conv_head` and its BatchNorm `_bn1`, and never call them, for two reasons: the
paper's parameter counts (19.5M for b4, 5.4M for b0; DESIGN section 2) include them, and
the ImageNet state_dict then loads strictly. `UNUSED_PREFIXES` names them so
`info.model_info` can report the parameters that never see the forward pass.

ImageNet weights come from `model.weights` (a local .pth) or from the torch hub cache
where efficientnet-pytorch itself looks; nothing is downloaded. They are read with
`weights_only=True` (the library's own loader does not, so we do not call it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.utils import url_map
from torch import nn

from ..config import ModelConfig
from ..errors import TuneHandError

# Built (for the parameter count and strict weight loading) but never run.
UNUSED_PREFIXES = ("_conv_head.", "_bn1.")


class EfficientNetEncoder(nn.Module):
    """Stem + MBConv blocks of an EfficientNet; `forward` returns (B, out_channels, S/32, S/32).

    Parameter names are efficientnet-pytorch's (`_conv_stem.weight`, `_blocks.0...`), so an
    ImageNet state_dict minus its classifier (`_fc.*`) loads into this module strictly.

    Args:
        name: efficientnet-b0 .. efficientnet-b7.
        image_size: the input size. The library pads convolutions TF-"same" with padding
            fixed for this size, so feed images of exactly this size.
        bn_momentum: PyTorch-convention BatchNorm momentum (the library takes 1 - this).
        width_coefficient, depth_coefficient: override the variant's scaling (random init only).
    """

    def __init__(self, name: str, image_size: int, bn_momentum: float = 0.01,
                 width_coefficient: float | None = None, depth_coefficient: float | None = None):
        super().__init__()
        overrides: dict = {"image_size": image_size, "include_top": False,
                           "batch_norm_momentum": 1.0 - bn_momentum}
        if width_coefficient is not None:
            overrides["width_coefficient"] = width_coefficient
        if depth_coefficient is not None:
            overrides["depth_coefficient"] = depth_coefficient
        net = EfficientNet.from_name(name, **overrides)
        # nn.SiLU is the same function as the library's MemoryEfficientSwish (which also saves
        # only its input) but one fused kernel, and it traces/compiles without a custom Function.
        net.set_swish(memory_efficient=False)

        self.name = name
        self._conv_stem, self._bn0, self._blocks = net._conv_stem, net._bn0, net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1  # unused; see module docstring
        self._swish = net._swish
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self.out_channels = net._blocks[-1]._block_args.output_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # EfficientNet.extract_features without conv_head; drop-connect (stochastic depth, only
        # active in training) grows linearly with block depth, exactly as the library scales it.
        x = self._swish(self._bn0(self._conv_stem(x)))
        n = len(self._blocks)
        for idx, block in enumerate(self._blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * idx / n)
        return x


def build_encoder(cfg: ModelConfig, image_size: int) -> EfficientNetEncoder:
    """The encoder of model config `cfg` for `image_size` inputs, randomly initialised.

    `load_imagenet_weights` fills it with ImageNet weights (`build_model` does, per
    `model.pretrained`).
    """
    return EfficientNetEncoder(cfg.encoder, image_size, bn_momentum=cfg.encoder_bn_momentum,
                               width_coefficient=cfg.width_coefficient, depth_coefficient=cfg.depth_coefficient)


def hub_weights_path(name: str) -> Path:
    """Where efficientnet-pytorch's download would land: <torch hub dir>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url_map[name]).name


def load_imagenet_weights(encoder: EfficientNetEncoder, weights: str | Path | None = None) -> Path:
    """Load ImageNet weights into `encoder` from `weights` or the hub cache; returns the file used.

    Raises a one-line TuneHandError when the file is missing (saying where to put it),
    unreadable, or not an efficientnet-pytorch state_dict for this variant.
    """
    name = encoder.name
    path = Path(weights).expanduser() if weights else hub_weights_path(name)
    if not path.is_file():
        raise TuneHandError(_missing_message(name, path, given=bool(weights)))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a weights file"
        raise TuneHandError(f"{path}: cannot read ImageNet weights for {name} "
                            f"({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TuneHandError(f"{path}: not a state_dict of tensors (expected efficientnet-pytorch "
                            f"weights for {name})")
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}  # the classifier
    _check_matches(path, name, state, encoder.state_dict())
    encoder.load_state_dict(state, strict=True)
    return path


def _check_matches(path: Path, name: str, state: dict, own: dict) -> None:
    """One-line errors for foreign files, before load_state_dict's multi-line ones."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise TuneHandError(f"{path}: not efficientnet-pytorch weights for {name}: keys {'; '.join(parts)}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise TuneHandError(f"{path}: not efficientnet-pytorch weights for {name}: {key} has shape "
                                f"{tuple(value.shape)}, expected {tuple(own[key].shape)} (another variant?)")


def missing_weights_message(name: str, weights: str | Path | None) -> str | None:
    """Why `load_imagenet_weights` would fail for lack of a file, or None when the file exists."""
    path = Path(weights).expanduser() if weights else hub_weights_path(name)
    return None if path.is_file() else _missing_message(name, path, given=bool(weights))


def _missing_message(name: str, path: Path, given: bool) -> str:
    file = Path(url_map[name]).name
    where = (f"model.weights={path}: no such file" if given
             else f"ImageNet weights for {name} not found at {path}")
    return (f"{where}; download {url_map[name]} and either place it at {hub_weights_path(name)} "
            f"or pass model.weights=/path/to/{file}; or set model.pretrained=false to train from scratch")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "empty message"
